"""The host end of the on-device runner's ``--serve`` protocol: one runner process per device and Python.

A :class:`RunnerServer` starts ``python3 -c BOOTSTRAP --serve`` with :meth:`Device.spawn` and sends the source of
``compleak_runner.py`` ahead of the protocol on its stdin; it returns at once, so the device imports NumPy and the
runtimes while the host probes it and prepares query inputs. Each artifact is then one ``load`` (the model file is
pushed into the server's job workspace), one ``infer`` per query chunk (rows stream to the device and are inferred
batch by batch while the rest is in transit; outputs come back as raw float32); the next ``load`` deletes the
previous model file. Interpreter start-up and runtime imports are paid once per collection, not once per artifact.

A :class:`RunnerServerPool` owns the servers of one collection (keyed by the device's Python command) and closes them
and their workspaces at the end. Message framing is the runner's own (:func:`read_message` / :func:`frame` in
``devices/ondevice/compleak_runner.py``), so both ends share one definition.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from devices.base import Device, DeviceProcess
from devices.errors import DeviceError
from devices.ondevice import RUNNER_FILENAME, runner_path
from devices.ondevice.compleak_runner import BOOTSTRAP, PROTOCOL, frame


class RunnerServer:
    """One ``compleak_runner.py --serve`` process on ``device``, started by :meth:`start` (non-blocking).

    The runner's source goes over stdin ahead of the protocol (``python -c BOOTSTRAP``), so starting needs no file
    on the device and no round trip; the job workspace for model files is created at the first :meth:`load`.

    Args:
        device: a device whose transport can spawn (``device.can_spawn``).
        python: argv prefix that starts the device's Python (None: ``device.default_python_argv()``, the
            interpreter the probe reports, so the server can start before the probe has answered).
        preload: runtimes or formats whose runtime to import before the runner says hello (e.g. ``["tflite"]``).
        hello_timeout_s: seconds to wait for the runner to start (interpreter + imports).
        runner: host path of the runner source (default: this release's ``compleak_runner.py``).
    """

    def __init__(self, device: Device, python: Sequence[str] | None = None, preload: Sequence[str] = (),
                 hello_timeout_s: float = 300.0, runner: Path | None = None) -> None:
        self.device = device
        self.runner = Path(runner) if runner else runner_path()
        self.python = list(python) if python else device.default_python_argv()
        self.preload = sorted(set(preload))
        self.hello_timeout_s = hello_timeout_s
        self.hello: dict[str, Any] | None = None
        self.startup_wait_seconds = 0.0  # how long the host waited for the hello (start-up not hidden by other work)
        self.workspace = ""
        self._proc: DeviceProcess | None = None
        self._start_error: DeviceError | None = None
        self._stack = ExitStack()
        self._models = 0

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "RunnerServer":
        """Spawn the runner and send it its source; does not wait for it to be ready (see :meth:`ready`)."""
        argv = [*self.python, "-c", BOOTSTRAP, "--serve"]
        if self.preload:
            argv += ["--preload", ",".join(self.preload)]
        self._proc = self.device.spawn(argv, label=RUNNER_FILENAME)
        source = self.runner.read_bytes()
        try:
            self._proc.send(f"{len(source)}\n".encode() + source, time.monotonic() + 60.0)
        except DeviceError as exc:  # e.g. no Python there: reported when the runner is first needed
            self._start_error = exc
        return self
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.exit_status() is None

    @property
    def process(self) -> DeviceProcess | None:
        """The running ``--serve`` command (None before start and after close)."""
        return self._proc

    def close(self) -> None:
        """End the runner (stdin closed: it exits) and remove its workspace. Safe to call twice."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                proc.close(timeout=10.0)
        except DeviceError:
            pass  # the transport is gone; the workspace removal below is best effort too
        finally:
            self._stack.close()

    def __enter__(self) -> "RunnerServer":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ protocol

    def ready(self) -> DeviceProcess:
        """Wait for the runner's hello (once) and check its protocol version; return the process."""
        if self._proc is None:
            raise DeviceError(f"{self.device.id}: the runner is not running (start() it first)")
        if self._start_error is not None:
            raise self._start_error
        if self.hello is None:
            t0 = time.perf_counter()
            hello, _ = self._reply("start-up", time.monotonic() + self.hello_timeout_s)
            self.startup_wait_seconds = time.perf_counter() - t0
            if hello.get("protocol") != PROTOCOL:
                self._proc.close(timeout=0.0)  # it would not understand a request: stop it now
                raise DeviceError(
                    f"{self.device.id}: the runner speaks protocol {hello.get('protocol')!r}, this host {PROTOCOL}; "
                    f"a stale {RUNNER_FILENAME} is in the way: reinstall compleak-harness"
                )
            self.hello = hello
        return self._proc

    def _reply(self, what: str, deadline: float) -> tuple[dict[str, Any], bytes]:
        """Read one framed reply (header, payload); an ``ok: false`` reply raises its error (the process lives on)."""
        assert self._proc is not None
        size = int.from_bytes(self._proc.recv_exact(4, deadline), "big")
        if size > 1 << 24:
            raise DeviceError(f"{self.device.id}: the runner's reply to {what} is garbled (a {size}-byte header); "
                              f"something on the device writes to its stdout")
        header = json.loads(self._proc.recv_exact(size, deadline).decode("utf-8"))
        payload = self._proc.recv_exact(int(header.get("bytes") or 0), deadline) if header.get("bytes") else b""
        if not header.get("ok"):
            raise DeviceError(str(header.get("error") or "the runner failed without a message"))
        return header, payload

    def _request(self, header: dict[str, Any], payload: bytes, what: str, timeout_s: float
                 ) -> tuple[dict[str, Any], bytes]:
        proc = self.ready()
        deadline = time.monotonic() + timeout_s
        proc.send(frame(header), deadline)
        if payload:
            proc.send(payload, deadline)
        return self._reply(what, deadline)

    def load(self, artifact_file: Path, fmt: str, runtime: str, threads: int | None = None, layout: str = "auto",
             timeout_s: float = 600.0) -> dict[str, Any]:
        """Push the artifact into the workspace and load it; returns ``{"info", "load_seconds", "upload_seconds"}``.

        It replaces the loaded model; the runner deletes the previous model file (no extra round trip).
        """
        if not self.workspace:
            self.workspace = self._stack.enter_context(self.device.workspace())
        self._models += 1
        remote = f"{self.workspace}/model-{self._models}.{fmt}"
        t0 = time.perf_counter()
        self.device.put(Path(artifact_file), remote)
        upload = time.perf_counter() - t0
        header, _ = self._request({"op": "load", "model": remote, "runtime": runtime, "threads": threads,
                                   "layout": layout, "workspace": self.workspace, "remove_previous": True},
                                  b"", f"loading {Path(artifact_file).name}", timeout_s)
        header["upload_seconds"] = upload
        return header

    def infer(self, x: np.ndarray, batch_size: int, timeout_s: float) -> tuple[np.ndarray, dict[str, Any]]:
        """Outputs float32 [M, C] of the loaded model for queries ``x`` float32 [M, H, W, C], and the reply header
        (``meta``, ``batch_seconds``, ``batch_sizes``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        body = memoryview(x).cast("B") if x.size else b""
        header, payload = self._request(
            {"op": "infer", "shape": list(x.shape), "bytes": x.nbytes, "batch_size": batch_size},
            body, f"inference on {len(x)} queries", timeout_s)  # type: ignore[arg-type]
        shape = [int(d) for d in header.get("shape", [])]
        if len(shape) != 2 or shape[0] != len(x) or len(payload) != 4 * shape[0] * shape[1]:
            raise DeviceError(f"{self.device.id}: the runner returned {len(payload)} bytes as shape {shape} for "
                              f"{len(x)} queries")
        return np.frombuffer(payload, np.float32).reshape(shape), header


class RunnerServerPool:
    """The runner servers of one collection on one device, one per Python command; closes them all at the end.

    :meth:`start_default` starts the server for the device's default Python before the device has been probed (the
    probe and the runner's start-up then overlap); :meth:`adopt_default` files it under the command the probe
    reported for that same interpreter.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self._servers: dict[tuple[str, ...], RunnerServer] = {}

    def start_default(self, preload: Sequence[str] = ()) -> RunnerServer:
        """Start (non-blocking) the server for ``device.default_python_argv()``."""
        return self.get(self.device.default_python_argv(), preload)

    def adopt_default(self, python: Sequence[str]) -> None:
        """Let ``python`` (the probe's name for the default interpreter) use the default server."""
        server = self._servers.get(tuple(self.device.default_python_argv()))
        if server is not None and tuple(python) not in self._servers:
            self._servers[tuple(python)] = server

    def get(self, python: Sequence[str], preload: Sequence[str] = ()) -> RunnerServer:
        """The running server for ``python`` (started now, non-blocking, if there is none or it died)."""
        key = tuple(python)
        server = self._servers.get(key)
        if server is not None and server.alive:
            return server
        if server is not None:
            server.close()
            self._servers = {k: v for k, v in self._servers.items() if v is not server}
        server = RunnerServer(self.device, python, preload).start()
        self._servers[key] = server
        return server

    def close(self) -> None:
        servers, self._servers = list({id(s): s for s in self._servers.values()}.values()), {}
        for server in servers:
            server.close()

    def __enter__(self) -> "RunnerServerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
