"""The host end of the on-device runner's ``--serve`` protocol: one runner process per device and Python.

Protocol: docs/native.md, "Runner protocol" (framing, hello, each op's request and reply, limits, errors).

A :class:`RunnerServer` starts ``python3 -c BOOTSTRAP --serve`` with :meth:`Device.spawn` and sends the source of
``compleak_runner.py`` ahead of the protocol on its stdin; it returns at once, so the device imports NumPy and the
runtimes while the host probes it and prepares query inputs. Each artifact is then one ``load`` (the model file is
pushed into the server's job workspace), one ``infer`` per query chunk (rows stream to the device and are inferred
batch by batch while the rest is in transit; outputs come back as raw float32); the next ``load`` deletes the
previous model file. Interpreter start-up and runtime imports are paid once per collection, not once per artifact.

Query inputs that are raw uint8 pixels under an affine preprocessing (:class:`DeviceDataset`) go to a runner that
advertises the ``dataset`` op once per runner process (:meth:`RunnerServer.send_dataset`); each chunk then names
its rows (:meth:`RunnerServer.infer_rows`: 4 bytes per query instead of ``4 * H * W * C``) and the runner
preprocesses them with the host's exact float32 arithmetic. A runner without the op gets float32 queries.

A :class:`RunnerServerPool` owns the servers of one collection (keyed by the device's Python command) and closes them
and their workspaces at the end. Requests are framed by the runner's own :func:`frame`
(``devices/ondevice/compleak_runner.py``), so both ends share one definition.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from devices.base import Device, DeviceProcess
from devices.errors import DeviceError
from devices.ondevice import RUNNER_FILENAME, runner_path
from devices.ondevice.compleak_runner import BOOTSTRAP, MAX_INFER_ROWS, PROTOCOL, frame, preprocess_uint8
from devices.spec import DEFAULT_START_TIMEOUT_S

#: largest reply header accepted (bytes of JSON); an infer reply may add 64 bytes per query row (batch timings)
MAX_HEADER_BYTES = 1 << 20
#: class count assumed for bounding an infer reply when the manifest does not state the model's output size
MAX_CLASSES = 1 << 16
#: largest infer reply payload accepted when the class count is unknown (bytes)
MAX_PAYLOAD_BYTES = 1 << 30
#: requests every protocol-1 runner answers; any other op is used only when the hello lists it in ``ops``
BASE_OPS = ("load", "infer", "exit")
#: largest query dataset the host sends (uint8 bytes), and the limit assumed when a runner lists ``dataset`` but
#: states no ``max_dataset_bytes``; larger query sets travel as float32 rows
MAX_DATASET_BYTES = 1 << 30
#: what :attr:`RunnerServer.bytes_sent` counts: the runner's source, model files, query datasets, query payloads
#: (float32 rows, or row numbers), request headers
TRAFFIC_KINDS = ("runner", "model", "dataset", "queries", "headers")


class RunnerRefusal(DeviceError):
    """The runner answered ``ok: false``: it refused one request and keeps serving."""


@dataclass(frozen=True, eq=False)
class DeviceDataset:
    """Query inputs as raw pixels to keep on the device: ``raw`` uint8 [N, H, W, C] (NHWC, C-order) and the affine
    preprocessing that makes rows of it model inputs (``compleak_runner.preprocess_uint8``: ``x * scale``, then
    ``- mean[c]``, then ``/ std[c]`` in float32; ``mean`` / ``std`` with 1 or C values, or None). ``key`` is the
    sha256 of ``raw``'s bytes, computed here."""

    raw: np.ndarray
    scale: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        if self.raw.dtype != np.uint8 or self.raw.ndim != 4:
            raise ValueError(f"a device dataset is uint8 [N, H, W, C], got {self.raw.dtype} {list(self.raw.shape)}")
        raw = np.ascontiguousarray(self.raw)
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "key", hashlib.sha256(memoryview(raw).cast("B")).hexdigest() if raw.size
                           else hashlib.sha256(b"").hexdigest())

    def preprocess(self) -> dict[str, Any]:
        """The ``preprocess`` object of the ``dataset`` request: every number a float32 value (exact in JSON)."""
        f32 = lambda v: None if v is None else [float(np.float32(a)) for a in v]  # noqa: E731
        return {"scale": float(np.float32(self.scale)), "mean": f32(self.mean), "std": f32(self.std)}

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """Model inputs float32 [len(rows), H, W, C] of ``rows``, computed on the host exactly as the runner does."""
        return preprocess_uint8(self.raw[rows], np.float32(self.scale), self.mean, self.std)


@dataclass(frozen=True, eq=False)
class DatasetRows:
    """Queries named by rows of a :class:`DeviceDataset`: ``rows`` int64 [M], each in [0, N). A runner session's
    ``infer`` takes it where the runner says so (``Runner.accepts_dataset_rows``)."""

    dataset: DeviceDataset
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def inputs(self) -> np.ndarray:
        """The float32 [M, H, W, C] queries these rows stand for (the fallback for runners without ``dataset``)."""
        return self.dataset.inputs(self.rows)


def _short(value: Any) -> str:
    """``repr`` of an untrusted value, cut to 60 characters (for one-line errors)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(text: str, limit: int = 300) -> str:
    """An untrusted message as one line of at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RunnerServer:
    """One ``compleak_runner.py --serve`` process on ``device``, started by :meth:`start` (non-blocking).

    The runner's source goes over stdin ahead of the protocol (``python -c BOOTSTRAP``), so starting needs no file
    on the device and no round trip; the job workspace for model files is created at the first :meth:`load`.

    Args:
        device: a device whose transport can spawn (``device.can_spawn``).
        python: argv prefix that starts the device's Python (None: ``device.default_python_argv()``, the
            interpreter the probe reports, so the server can start before the probe has answered).
        preload: runtimes or formats whose runtime to import before the runner says hello (e.g. ``["tflite"]``).
        hello_timeout_s: seconds to wait for the runner to start (interpreter + imports; ``collect
            --start-timeout``); a runner that says nothing by then is stopped with a one-line error.
        runner: host path of the runner source (default: this release's ``compleak_runner.py``).
    """

    def __init__(self, device: Device, python: Sequence[str] | None = None, preload: Sequence[str] = (),
                 hello_timeout_s: float = DEFAULT_START_TIMEOUT_S, runner: Path | None = None) -> None:
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
        self.dataset_key = ""  # sha256 of the query dataset the runner holds ("" none)
        self._loaded: tuple[Any, ...] | None = None  # (key, format, runtime, threads, layout) of the loaded model
        self._loaded_header: dict[str, Any] = {}
        self.dataset_refused = ""  # why the runner refused a dataset (then this server gets float32 queries)
        self.bytes_sent = dict.fromkeys(TRAFFIC_KINDS, 0)  # bytes the host sent this runner, by kind

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def attach(cls, device: Device, process: DeviceProcess) -> "RunnerServer":
        """A server over a runner process started by other means, read from its hello on: e.g. the recorded reply
        file of a one-shot native runner command (:mod:`devices.runners.native_oneshot`), whose requests were in its
        input file, so what this server sends is dropped and the replies are read in order, with every check."""
        server = cls(device, python=[process.label or RUNNER_FILENAME])
        server._proc = process
        return server

    def start(self) -> "RunnerServer":
        """Spawn the runner and send it its source; does not wait for it to be ready (see :meth:`ready`)."""
        argv = [*self.python, "-c", BOOTSTRAP, "--serve"]
        if self.preload:
            argv += ["--preload", ",".join(self.preload)]
        self._proc = self.device.spawn(argv, label=RUNNER_FILENAME)
        source = self.runner.read_bytes()
        try:
            self.bytes_sent["runner"] += len(source) + len(f"{len(source)}\n")
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
            deadline = time.monotonic() + self.hello_timeout_s
            try:
                hello, _ = self._reply("start-up", deadline, max_header=1 << 16)
            except DeviceError:
                if time.monotonic() < deadline or self._proc is None:
                    raise  # it ended, crashed or spoke garbage: that error says why
                self._proc.close(timeout=0.0)
                raise DeviceError(
                    f"{self.device.id}: the runner did not start within {self.hello_timeout_s:g}s (no hello from "
                    f"{RUNNER_FILENAME}; last stderr: {_one_line(self._proc.stderr_text()[-300:]) or 'none'}); "
                    f"check the device's Python and runtimes with `compleak devices probe {self.device.id}` or "
                    f"raise --start-timeout"
                ) from None
            self.startup_wait_seconds = time.perf_counter() - t0
            if hello.get("hello") != "compleak-runner" or type(hello.get("protocol")) is not int:
                raise self._garbled("start-up", f"a hello without 'hello': 'compleak-runner' and an integer "
                                                f"protocol: {_short(hello)}")
            if hello.get("protocol") != PROTOCOL:
                self._proc.close(timeout=0.0)  # it would not understand a request: stop it now
                raise DeviceError(
                    f"{self.device.id}: the runner speaks protocol {hello.get('protocol')!r}, this host {PROTOCOL}; "
                    f"a stale {RUNNER_FILENAME} is in the way: reinstall compleak-harness"
                )
            self.hello = hello
        return self._proc

    def require_runner(self, name: str) -> None:
        """After :meth:`ready`: a hello whose ``runner`` is not ``name`` (the native runner says ``"native"``)
        stops the runner and raises the one-line garbled-reply error."""
        if (self.hello or {}).get("runner") != name:
            raise self._garbled("start-up", f"a hello that is not the {name} runner's")

    def read_reply(self, what: str, timeout_s: float, max_payload: int = 0) -> tuple[dict[str, Any], bytes]:
        """Read the next reply without sending a request (its request went by other means: :meth:`attach`);
        every check of :meth:`_reply` applies."""
        self.ready()
        return self._reply(what, time.monotonic() + timeout_s, max_payload)

    def supports(self, op: str) -> bool:
        """Whether the runner answers ``op``: the base ops always, others when its hello lists them in ``ops``
        (call after :meth:`ready`)."""
        if op in BASE_OPS:
            return True
        ops = (self.hello or {}).get("ops")
        return isinstance(ops, list) and any(o == op for o in ops if isinstance(o, str))

    @property
    def max_dataset_bytes(self) -> int:
        """Largest query dataset to send this runner: its hello's ``max_dataset_bytes`` (default and cap
        :data:`MAX_DATASET_BYTES`); 0 when it does not list the ``dataset`` op."""
        if not self.supports("dataset"):
            return 0
        limit = (self.hello or {}).get("max_dataset_bytes", MAX_DATASET_BYTES)
        return min(limit, MAX_DATASET_BYTES) if type(limit) is int and limit > 0 else 0

    def _stop(self) -> None:
        """Stop the runner now (its stream is out of step); the pool starts a fresh one for the next artifact."""
        if self._proc is not None:
            try:
                self._proc.close(timeout=0.0)
            except DeviceError:
                pass

    def _garbled(self, what: str, why: str) -> DeviceError:
        """Stop the runner (its stream is out of step) and return the one-line error for a malformed reply."""
        self._stop()
        return DeviceError(f"{self.device.id}: the runner's reply to {what} is garbled ({why}); something on the "
                           f"device writes to the runner's stdout or it is not compleak's runner; rerun collect "
                           f"(a fresh runner is started)")

    def _reply(self, what: str, deadline: float, max_payload: int = 0, max_header: int = MAX_HEADER_BYTES,
               check: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], bytes]:
        """Read one framed reply (header, payload); an ``ok: false`` reply raises its error (the process lives on).

        Every byte is untrusted: the header is at most ``max_header`` bytes of JSON holding an object with a boolean
        ``ok`` and a non-negative integer ``bytes``, and the payload at most ``max_payload`` bytes. Anything else
        stops the runner and raises one line. ``check`` sees a successful reply's header before its payload is read.
        """
        assert self._proc is not None
        size = int.from_bytes(self._proc.recv_exact(4, deadline), "big")
        if not 0 < size <= max_header:
            raise self._garbled(what, f"a {size}-byte header, at most {max_header} expected")
        try:
            header = json.loads(self._proc.recv_exact(size, deadline).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise self._garbled(what, "a header that is not JSON") from None
        if not isinstance(header, dict):
            raise self._garbled(what, f"a JSON {type(header).__name__} header instead of an object")
        ok, nbytes = header.get("ok"), header.get("bytes", 0)
        if not isinstance(ok, bool):
            raise self._garbled(what, "no true/false 'ok' in the header")
        if nbytes is None:
            nbytes = 0
        if type(nbytes) is not int or nbytes < 0:
            raise self._garbled(what, f"'bytes' is {_short(nbytes)}, not a byte count")
        if not ok:
            if nbytes:
                raise self._garbled(what, "an error reply with a payload")
            error = header.get("error")
            raise RunnerRefusal(_one_line(error) if isinstance(error, str) and error.strip()
                                else "the runner failed without a message")
        if check is not None:
            check(header)
        if nbytes > max_payload:
            raise self._garbled(what, f"a {nbytes}-byte payload, at most {max_payload} expected")
        payload = self._proc.recv_exact(nbytes, deadline) if nbytes else b""
        return header, payload

    def _request(self, header: dict[str, Any], payload: bytes | memoryview, what: str, timeout_s: float,
                 max_payload: int = 0, max_header: int = MAX_HEADER_BYTES,
                 check: Callable[[dict[str, Any]], None] | None = None, kind: str = "queries"
                 ) -> tuple[dict[str, Any], bytes]:
        """Send one request (header, then ``payload``, counted in :attr:`bytes_sent` under ``kind``) and read its
        reply (:meth:`_reply`)."""
        proc = self.ready()
        deadline = time.monotonic() + timeout_s
        head = frame(header)
        self.bytes_sent["headers"] += len(head)
        proc.send(head, deadline)
        if payload:
            self.bytes_sent[kind] += len(payload) if isinstance(payload, bytes) else payload.nbytes
            proc.send(payload, deadline)  # type: ignore[arg-type]
        return self._reply(what, deadline, max_payload, max_header, check)

    def load(self, artifact_file: Path, fmt: str, runtime: str, threads: int | None = None, layout: str = "auto",
             timeout_s: float = 600.0, key: str | None = None) -> dict[str, Any]:
        """Push the artifact into the workspace and load it; returns ``{"info", "load_seconds", "upload_seconds"}``.

        It replaces the loaded model; the runner deletes the previous model file (no extra round trip). ``key``
        (the artifact's verified sha256): when the runner still holds that model with the same runtime, threads and
        layout (e.g. SAMIA's perturbed queries right after the plain ones), nothing is sent and the reply is the
        earlier one with ``reused: true`` and zero seconds.
        """
        wanted = (key, fmt, runtime, threads, layout)
        if key and self._loaded == wanted and self.alive:
            return {**self._loaded_header, "load_seconds": 0.0, "upload_seconds": 0.0, "reused": True}
        self._loaded = None  # a failed load leaves nothing the runner is known to hold
        if not self.workspace:
            self.workspace = self._stack.enter_context(self.device.workspace())
        self._models += 1
        remote = f"{self.workspace}/model-{self._models}.{fmt}"
        t0 = time.perf_counter()
        self.device.put(Path(artifact_file), remote)
        upload = time.perf_counter() - t0
        self.bytes_sent["model"] += Path(artifact_file).stat().st_size
        header, _ = self._request({"op": "load", "model": remote, "runtime": runtime, "threads": threads,
                                   "layout": layout, "workspace": self.workspace, "remove_previous": True},
                                  b"", f"loading {Path(artifact_file).name}", timeout_s)
        header["upload_seconds"] = upload
        self._loaded, self._loaded_header = (wanted if key else None), dict(header)
        return header

    def infer(self, x: np.ndarray, batch_size: int, timeout_s: float, n_classes: int | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Outputs float32 [M, C] of the loaded model for queries ``x`` float32 [M, H, W, C], and the reply header
        (``meta``, ``batch_seconds``, ``batch_sizes``).

        ``n_classes`` (C, when the manifest knows it) bounds the reply exactly: ``M * C * 4`` payload bytes; else at
        most ``M * MAX_CLASSES * 4`` (and :data:`MAX_PAYLOAD_BYTES`). A reply of another shape, or one whose header
        fields have the wrong types, is refused with one line.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        body = memoryview(x).cast("B") if x.size else b""
        return self._infer({"op": "infer", "shape": list(x.shape), "bytes": x.nbytes, "batch_size": batch_size},
                           body, len(x), timeout_s, n_classes)

    def send_dataset(self, dataset: DeviceDataset, timeout_s: float) -> int:
        """Leave ``dataset`` on the runner (one ``dataset`` request) unless it holds it already; returns the payload
        bytes sent (0: already held). The runner holds one dataset: this replaces any other. Raises
        :class:`RunnerRefusal` when the runner refuses it (it keeps serving) and DeviceError otherwise."""
        if self.dataset_key == dataset.key:
            return 0
        raw = dataset.raw
        what = f"the query dataset ({len(raw)} rows of {list(raw.shape[1:])} uint8)"
        self.dataset_key = ""  # the runner drops what it held before it reads the new one
        header, _ = self._request({"op": "dataset", "key": dataset.key, "shape": list(raw.shape), "dtype": "uint8",
                                   "bytes": raw.nbytes, "preprocess": dataset.preprocess()},
                                  memoryview(raw).cast("B") if raw.size else b"", what, timeout_s, kind="dataset")
        if header.get("key") != dataset.key or header.get("rows") != len(raw):
            raise self._garbled(what, f"key {_short(header.get('key'))} and rows {_short(header.get('rows'))}, not "
                                      f"the dataset's")
        self.dataset_key = dataset.key
        return raw.nbytes

    def infer_rows(self, rows: DatasetRows, batch_size: int, timeout_s: float, n_classes: int | None = None
                   ) -> tuple[np.ndarray, dict[str, Any]]:
        """Like :meth:`infer` for the queries ``rows`` names in the dataset the runner holds (:meth:`send_dataset`
        first): the request carries 4 bytes (a uint32 row number) per query."""
        if self.dataset_key != rows.dataset.key:
            raise DeviceError(f"{self.device.id}: the runner does not hold query dataset {rows.dataset.key[:16]}...; "
                              f"send_dataset() first")
        index = np.asarray(rows.rows, dtype=np.int64)
        n = len(rows.dataset.raw)
        if len(index) > MAX_INFER_ROWS or (len(index) and (index.min() < 0 or index.max() >= n)):
            raise DeviceError(f"{self.device.id}: {len(index)} rows of a {n}-row query dataset named (each must be "
                              f"in [0, {n}), at most {MAX_INFER_ROWS} per request); use a smaller chunk size")
        body = index.astype("<u4").tobytes()
        return self._infer({"op": "infer", "dataset": rows.dataset.key, "rows": len(index), "bytes": len(body),
                            "batch_size": batch_size}, body, len(index), timeout_s, n_classes)

    def _infer(self, request: dict[str, Any], body: bytes | memoryview, m: int, timeout_s: float,
               n_classes: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Send one infer request for ``m`` queries and read its float32 [m, C] outputs, bounded and type-checked."""
        what = f"inference on {m} queries"
        limit = 4 * m * n_classes if n_classes else min(4 * m * MAX_CLASSES, MAX_PAYLOAD_BYTES)

        def check(header: dict[str, Any]) -> None:  # before the payload is read: a wrong shape is not read at all
            shape = header.get("shape")
            if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int for d in shape)):
                raise self._garbled(what, f"output shape {_short(shape)}, not [rows, classes]")
            if shape[0] != m or shape[1] < 1 or (n_classes and shape[1] != n_classes):
                self._stop()
                want = f"[{m}, {n_classes}]" if n_classes else f"[{m}, C >= 1]"
                raise DeviceError(
                    f"{self.device.id}: the runner returned outputs of shape {shape} for {m} queries, expected "
                    f"{want}; the artifact does not match the manifest or the device runtime is broken; nothing was "
                    f"stored")
            if header.get("bytes") != 4 * shape[0] * shape[1]:
                raise self._garbled(what, f"a {header.get('bytes')}-byte payload for float32 outputs of shape {shape}")

        header, payload = self._request(request, body, what, timeout_s, max_payload=limit,
                                        max_header=MAX_HEADER_BYTES + 64 * m, check=check)
        shape = header["shape"]
        for key, kind in (("meta", dict), ("batch_seconds", list), ("batch_sizes", list)):
            if not isinstance(header.get(key, kind()), kind):
                raise self._garbled(what, f"{key!r} is {_short(header.get(key))}, not a {kind.__name__}")
        header["batch_seconds"] = [float(v) for v in header.get("batch_seconds", [])
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        header["batch_sizes"] = [v for v in header.get("batch_sizes", []) if type(v) is int]
        return np.frombuffer(payload, np.float32).reshape(shape), header


class RunnerServerPool:
    """The runner servers of one collection on one device, one per Python command; closes them all at the end.

    :meth:`start_default` starts the server for the device's default Python before the device has been probed (the
    probe and the runner's start-up then overlap); :meth:`adopt_default` files it under the command the probe
    reported for that same interpreter.
    """

    def __init__(self, device: Device, start_timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        self.device = device
        self.start_timeout_s = start_timeout_s  # seconds each runner may take to say hello
        self._servers: dict[tuple[str, ...], RunnerServer] = {}
        self._sent = dict.fromkeys(TRAFFIC_KINDS, 0)  # traffic of runners closed or replaced

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
        return self.get_or_start(tuple(python), lambda: RunnerServer(self.device, python, preload,
                                                                     hello_timeout_s=self.start_timeout_s))

    def get_or_start(self, key: tuple[str, ...], make: Callable[[], RunnerServer]) -> RunnerServer:
        """The running server filed under ``key``; else ``make()``'s, started now (non-blocking) and filed there.

        A dead one is closed and dropped first (under every key it was filed under); its traffic still counts. Any
        kind of runner server can be filed (e.g. the native runner's, under a key no Python command can have), and
        the pool closes them all.
        """
        server = self._servers.get(key)
        if server is not None and server.alive:
            return server
        if server is not None:
            server.close()
            for k in TRAFFIC_KINDS:  # a replaced runner's traffic still counts
                self._sent[k] += server.bytes_sent[k]
            self._servers = {k: v for k, v in self._servers.items() if v is not server}
        server = make().start()
        self._servers[key] = server
        return server

    def bytes_sent(self) -> dict[str, int]:
        """Bytes the host has sent this device's runners so far, by kind (:data:`TRAFFIC_KINDS`), replaced runners
        included."""
        return {k: self._sent[k] + sum(s.bytes_sent[k] for s in self._unique()) for k in TRAFFIC_KINDS}

    def _unique(self) -> list[RunnerServer]:
        return list({id(s): s for s in self._servers.values()}.values())

    def close(self) -> None:
        servers, self._servers = self._unique(), {}
        for server in servers:
            for k in TRAFFIC_KINDS:
                self._sent[k] += server.bytes_sent[k]
            server.close()

    def __enter__(self) -> "RunnerServerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
