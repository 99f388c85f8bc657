"""The native runner on transports that cannot keep a command running (``Device.can_spawn`` False: adb).

Same binary, same protocol, no new mode: per query chunk the host writes ONE request file (``load``, ``infer`` with
the float32 queries as payload, ``exit``), pushes it, runs ``compleak-runner --serve <req.bin >rep.bin`` in the job
workspace and pulls ``rep.bin``. The replies (hello, load, infer) are read back through
:class:`~devices.runners.server.RunnerServer`'s own bounded reader over the recorded bytes, so every check of a
reply (sizes, shapes, types, protocol version, one-line errors, crashes named as such) is the server path's.

The bundle is installed once per device (:func:`~devices.runners.native.install_bundle`: kept in
``<workspace base>/runners/``, reused while the device's sha256 of every file equals the host's); the model is pushed
once per session (artifact) and loaded again for each chunk (a command cannot outlive its chunk on such a
transport). The bundle's files are checked against ``manifest.json`` on the host before a push, with the device's
``sha256sum`` after it and before every reuse, and by the binary itself at every start (it refuses in
one line instead of its hello), and every load is verified and contained on the device as in server mode
(docs/native.md, "What is verified and contained").
"""

from __future__ import annotations

import shlex
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from devices.base import Device, DeviceProcess, _keyed
from devices.errors import DeviceError
from devices.native.bundle import BUNDLE_NAME
from devices.ondevice.compleak_runner import frame
from devices.runners.base import Infer, error_detail, output_classes, utc_now
from devices.runners.native import NativeRunner, install_bundle
from devices.runners.server import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES, RunnerServer
from rundir import ArtifactRecord

#: bytes of a reply file beyond the float32 outputs: hello, load reply, infer header (64 bytes per query row)
_REPLY_OVERHEAD = 3 * MAX_HEADER_BYTES


class RecordedReplies(DeviceProcess):
    """The stdout of a finished one-shot runner command, read as a :class:`DeviceProcess` would be.

    ``send`` does nothing (the requests were in the command's input file); ``recv_exact`` past the end raises the
    one-line error of a command that ended (its exit status and stderr: a crash is named as such).
    """

    def __init__(self, device_id: str, data: bytes, status: int | None, stderr: str) -> None:
        self.device_id = device_id
        self.argv = [BUNDLE_NAME, "--serve"]
        self.label = BUNDLE_NAME
        self._data = data
        self._pos = 0
        self._status = status
        self._stderr = stderr

    def send(self, data: bytes, deadline: float) -> None:
        return None

    def recv_exact(self, n: int, deadline: float) -> bytes:
        if self._pos + n > len(self._data):
            raise self.ended_error("its reply")
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def exit_status(self) -> int | None:
        return self._status

    def stderr_text(self) -> str:
        return self._stderr

    def close(self, timeout: float = 10.0) -> int | None:
        return self._status


class NativeOneShotRunner(NativeRunner):
    """:class:`~devices.runners.native.NativeRunner` for devices that cannot keep a command running: one runner
    command per query chunk, requests and replies in files (see the module docstring). Provenance is the native
    runner's, with ``transfer`` saying so."""

    accepts_dataset_rows = False  # the queries go as float32 in the request file

    def __init__(self, bundle: Path, fmt: str, batch_size: int = 256, threads: int | None = None,
                 timeout_s: float = 600.0, per_query_timeout_s: float = 0.05) -> None:
        super().__init__(bundle, fmt, batch_size=batch_size, threads=threads, timeout_s=timeout_s,
                         per_query_timeout_s=per_query_timeout_s, pool=None)

    @contextmanager
    def session(self, device: Device, artifact_file: Path, artifact: ArtifactRecord) -> Iterator[Infer]:
        layout = str(getattr(artifact.inputs[0], "layout", None) or "auto") if artifact.inputs else "auto"
        if layout not in ("NHWC", "NCHW"):
            layout = "auto"
        where = f"{device.id}: {artifact.id} on {self.runtime} {self.runtime_version}"
        with tempfile.TemporaryDirectory(prefix="compleak-native-") as tmp, device.workspace() as ws:
            t0 = time.perf_counter()
            try:
                command, pushed = install_bundle(device, self.bundle)
            except DeviceError as exc:
                why = error_detail(exc, device.id)
                raise DeviceError(f"{where}: cannot install the native runner: {why}") from None
            bundle_s = time.perf_counter() - t0
            remote_model = f"{ws}/model.{artifact.format}"
            device.put(Path(artifact_file), remote_model)
            model_s = time.perf_counter() - t0 - bundle_s
            calls = [0]

            def infer(inputs: Any) -> tuple[np.ndarray, dict[str, Any]]:
                x = inputs.inputs() if hasattr(inputs, "inputs") and not isinstance(inputs, np.ndarray) else inputs
                x = np.ascontiguousarray(x, dtype=np.float32)
                if x.ndim != 4:
                    raise DeviceError(f"{artifact.id}: query inputs must be float32 [M, H, W, C], got {list(x.shape)}")
                calls[0] += 1
                first = calls[0] == 1
                try:
                    values, prov = self._one_shot(device, artifact, Path(tmp), ws, command, remote_model, x, layout)
                except DeviceError as exc:
                    raise DeviceError(f"{where}: {error_detail(exc, device.id)}") from None
                prov["upload_seconds"] += model_s if first else 0.0
                prov["wall_seconds"] += model_s if first else 0.0
                if first:
                    prov["bundle_upload_seconds"] = bundle_s
                    prov["bundle_pushed"] = pushed
                prov["bytes_sent"]["model"] = Path(artifact_file).stat().st_size if first else 0
                return values, prov

            yield infer

    def _one_shot(self, device: Device, artifact: ArtifactRecord, tmp: Path, ws: str, command: list[str],
                  remote_model: str, x: np.ndarray, layout: str) -> tuple[np.ndarray, dict[str, Any]]:
        """One chunk: request file up, one runner command (``command``: :func:`install_bundle`'s, through the bundled
        loader when there is one), reply file down, replies checked; (values, provenance)."""
        started = utc_now()
        t0 = time.perf_counter()
        m = len(x)
        classes = output_classes(artifact)
        # paths in the request are relative to the workspace (the command runs there): nothing in a file's content
        # depends on how the transport names the device's file system
        head = frame({"op": "load", "model": "./" + remote_model.rsplit("/", 1)[-1], "runtime": self.runtime,
                      "threads": self.threads, "layout": layout, "workspace": ".", "remove_previous": False})
        infer_head = frame({"op": "infer", "shape": list(x.shape), "bytes": x.nbytes, "batch_size": self.batch_size})
        request = head + infer_head + x.tobytes() + frame({"op": "exit"})
        remote_req, remote_rep = f"{ws}/req.bin", f"{ws}/rep.bin"
        local_req = device.host_path(remote_req) or tmp / "req.bin"
        local_req.write_bytes(request)
        if device.host_path(remote_req) is None:
            device.put(local_req, remote_req)
        t_up = time.perf_counter() - t0
        q = shlex.quote
        script = (f"cd {q(ws)} && {' '.join(q(a) for a in command)} --serve <req.bin >rep.bin; r=$?; "
                  f'echo "rep_bytes=$(wc -c <rep.bin 2>/dev/null)"; exit $r')
        timeout = self.timeout_s + self.per_query_timeout_s * m
        res = device.run(["sh", "-c", script], timeout=timeout)
        t1 = time.perf_counter()
        limit = _REPLY_OVERHEAD + 64 * m + 4 * m * (classes or min(1 << 16, MAX_PAYLOAD_BYTES // max(4 * m, 1)))
        size_text = _keyed(res.text).get("rep_bytes", "").strip()
        size = int(size_text) if size_text.isdigit() else 0
        if size > limit:
            raise DeviceError(f"{device.id}: the runner's reply file is {size} bytes, at most {limit} expected for "
                              f"{m} queries; something on the device writes to its stdout; nothing was stored")
        local_rep = device.host_path(remote_rep) or tmp / "rep.bin"
        if size and device.host_path(remote_rep) is None:
            device.get(remote_rep, local_rep)
        data = local_rep.read_bytes()[:limit] if size else b""
        t_down = time.perf_counter() - t1
        recorded = RecordedReplies(device.id, data, res.returncode, res.stderr.decode("utf-8", "replace"))
        reader = RunnerServer.attach(device, recorded)
        reader.ready()
        reader.require_runner("native")
        hello = reader.hello or {}
        loaded, _ = reader.read_reply(f"loading {artifact.id}", timeout)
        values, reply = reader.infer(x, self.batch_size, timeout, n_classes=classes)
        meta = reply.get("meta", {}) if isinstance(reply.get("meta"), dict) else {}
        prov = self._provenance(
            meta, reply.get("batch_seconds", []), reply.get("batch_sizes", []), None, None,
            "one-shot runner command per chunk (request and reply files)", started, [],
            load_seconds=loaded.get("load_seconds"), upload_seconds=t_up, download_seconds=t_down,
            command_seconds=res.seconds, wall_seconds=time.perf_counter() - t0,
        )
        prov["native_runner_version"] = hello.get("runner_version")
        prov["device_machine"] = hello.get("machine")
        prov["bytes_sent"] = {"model": 0, "dataset": 0, "queries": x.nbytes,
                              "headers": len(head) + len(infer_head)}
        return values, prov
