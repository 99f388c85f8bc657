"""The Python runner: the single-file on-device runner (``devices/ondevice/compleak_runner.py``) run by the device's
Python.

Where the transport can keep a command running (local, ssh: ``Device.can_spawn``) it talks to one ``--serve``
process (:mod:`devices.runners.server`; shared by a whole collection through a
:class:`~devices.runners.server.RunnerServerPool`): queries stream in over stdin and are inferred while the rest is
in transit. Elsewhere (adb) it pushes the artifact and ONE input archive into a fresh workspace, runs the whole query
batch in one process and pulls ONE output archive back.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from devices.base import Device, failure_detail
from devices.errors import DeviceError
from devices.ondevice import RUNNER_FILENAME, runner_path
from devices.runners.base import Infer, Runner, error_detail, output_classes, utc_now
from devices.runners.server import DatasetRows, RunnerRefusal, RunnerServer, RunnerServerPool
from rundir import ArtifactRecord


@dataclass
class _ArchiveSession:
    """One artifact's session on the archive path (adb): the device and artifact, the host's scratch folder, the
    device workspace with the runner and model pushed into it, the model's input layout, the compatibility notes,
    and the model upload (seconds), charged to the session's first chunk."""

    device: Device
    artifact: ArtifactRecord
    artifact_file: Path
    tmp: Path
    ws: str
    remote_runner: str
    remote_model: str
    layout: str
    notes: list[str]
    upload_model_s: float
    chunks: int = 0

    def next_chunk(self) -> tuple[float, int]:
        """Count one more chunk; its share of the model upload: (seconds, bytes) on the first chunk, else zeros."""
        self.chunks += 1
        if self.chunks > 1:
            return 0.0, 0
        return self.upload_model_s, self.artifact_file.stat().st_size


class PythonRunner(Runner):
    """Runs ``compleak_runner.py`` with the device's Python and the given runtime.

    Its sessions take float32 queries or :class:`DatasetRows`: on a runner server that lists the ``dataset`` op the
    uint8 dataset is sent once per runner process and each chunk names its rows; elsewhere (an older runner, a
    dataset over the runner's limit or refused by it, the archive path) the rows become float32 queries on the host
    with the same arithmetic, so the outputs are the same.
    """

    name = "python"
    accepts_dataset_rows = True

    def __init__(
        self,
        python: list[str],
        runtime: str,
        runtime_version: str,
        batch_size: int = 256,
        threads: int | None = None,
        timeout_s: float = 600.0,
        per_query_timeout_s: float = 0.05,
        pool: RunnerServerPool | None = None,
    ) -> None:
        self.pool = pool
        self.python = python
        self.runtime = runtime
        self.runtime_version = runtime_version
        self.batch_size = batch_size
        self.threads = threads
        self.timeout_s = timeout_s
        self.per_query_timeout_s = per_query_timeout_s

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name, "runtime": self.runtime, "runtime_version": self.runtime_version}

    def check(self, artifact_file: Path, artifact: ArtifactRecord, device: Device) -> list[str]:
        """Compatibility check before anything is pushed; returns notes for provenance."""
        if artifact.format == "tflite" and self.runtime in ("tflite_runtime", "ai_edge_litert", "tensorflow"):
            from devices.compat import check_tflite

            return check_tflite(artifact_file, self.runtime, self.runtime_version, device.id)
        return []

    @contextmanager
    def session(self, device: Device, artifact_file: Path, artifact: ArtifactRecord) -> Iterator[Infer]:
        notes = self.check(artifact_file, artifact, device)
        layout = str(getattr(artifact.inputs[0], "layout", None) or "auto") if artifact.inputs else "auto"
        if layout not in ("NHWC", "NCHW"):
            layout = "auto"
        if device.can_spawn:
            with ExitStack() as stack:
                if self.pool is not None:
                    server = self.pool.get(self.python, [self.runtime])
                else:
                    server = stack.enter_context(RunnerServer(device, self.python, [self.runtime]))
                yield from self._served(device, server, Path(artifact_file), artifact, layout, notes)
            return
        with tempfile.TemporaryDirectory(prefix="compleak-io-") as tmp, device.workspace() as ws:
            t0 = time.perf_counter()
            remote_runner = f"{ws}/{RUNNER_FILENAME}"
            remote_model = f"{ws}/model.{artifact.format}"
            device.put(runner_path(), remote_runner)
            device.put(Path(artifact_file), remote_model)
            archive = _ArchiveSession(device, artifact, Path(artifact_file), Path(tmp), ws, remote_runner,
                                      remote_model, layout, notes, upload_model_s=time.perf_counter() - t0)

            def infer(inputs: np.ndarray | DatasetRows) -> tuple[np.ndarray, dict[str, Any]]:
                return self._infer(archive, inputs)

            yield infer

    def _provenance(self, meta: dict[str, Any], batch_seconds: list[float], batch_sizes: list[int],
                    python: str | None, numpy: str | None, transfer: str, started: str, notes: list[str],
                    **seconds: float | None) -> dict[str, Any]:
        """Provenance of one answered chunk: what ran it (from the runner's ``meta``), per-batch timings and the
        ``seconds`` of each phase (``load_seconds``, ``upload_seconds``, ``command_seconds`` ...)."""
        return {
            "runner": self.name,
            "runtime": meta.get("runtime", self.runtime),
            "runtime_version": meta.get("runtime_version", self.runtime_version),
            "delegate": meta.get("delegate"),
            "threads": meta.get("threads"),
            "batch_size": self.batch_size,
            "batch_seconds": batch_seconds,
            "batch_sizes": batch_sizes,
            "invoke_seconds": meta.get("invoke_seconds"),
            **seconds,
            "transfer": transfer,
            "input_layout": meta.get("input_layout"),
            "device_python": python,
            "device_numpy": numpy,
            "started": started,
            "finished": utc_now(),
            "compat_notes": notes,
        }

    def _served(self, device: Device, server: RunnerServer, artifact_file: Path, artifact: ArtifactRecord,
                layout: str, notes: list[str]) -> Iterator[Infer]:
        """The body of :meth:`session` on a runner server: load once, one ``infer`` request per call.

        Each answered chunk's provenance says how its queries travelled (``transfer``, and ``query_dataset`` for
        rows of the device-resident dataset) and what the host sent for it (``bytes_sent`` by kind; the first chunk
        also carries the model upload, and the chunk that sent the dataset its bytes)."""
        where = f"{device.id}: {artifact.id} on {self.runtime} {self.runtime_version}"
        sent = dict(server.bytes_sent)
        try:
            loaded = server.load(artifact_file, artifact.format, self.runtime, self.threads, layout, self.timeout_s,
                                 key=artifact.sha256)
        except DeviceError as exc:
            raise DeviceError(f"{where}: {error_detail(exc, device.id)}") from None
        calls = [0]

        def infer(inputs: np.ndarray | DatasetRows) -> tuple[np.ndarray, dict[str, Any]]:
            rows = inputs if isinstance(inputs, DatasetRows) else None
            x = None if rows is not None else np.ascontiguousarray(inputs, dtype=np.float32)
            if x is not None and x.ndim != 4:
                raise DeviceError(f"{artifact.id}: query inputs must be float32 [M, H, W, C], got {list(x.shape)}")
            m = len(rows) if rows is not None else len(x)  # type: ignore[arg-type]
            calls[0] += 1
            first = calls[0] == 1
            started = utc_now()
            t0 = time.perf_counter()
            timeout = self.timeout_s + self.per_query_timeout_s * m
            extra: dict[str, Any] = {}
            try:
                if rows is not None:
                    extra = self._dataset_on(server, rows, timeout)
                if rows is not None and server.dataset_key == rows.dataset.key:
                    values, reply = server.infer_rows(rows, self.batch_size, timeout,
                                                      n_classes=output_classes(artifact))
                else:
                    x = rows.inputs() if rows is not None else x
                    values, reply = server.infer(x, self.batch_size, timeout,  # type: ignore[arg-type]
                                                 n_classes=output_classes(artifact))
            except DeviceError as exc:
                raise DeviceError(f"{where}: {error_detail(exc, device.id)}") from None
            wall = time.perf_counter() - t0
            meta = reply.get("meta", {})
            hello = server.hello or {}
            upload = loaded.get("upload_seconds", 0.0) if first else 0.0
            if "query_dataset" in extra:
                transfer = ("runner server (query rows named in the device-resident uint8 dataset, preprocessed on "
                            "the device; outputs over stdout)")
            else:
                transfer = "runner server (queries streamed over stdin, outputs over stdout)"
            now = dict(server.bytes_sent)
            extra["bytes_sent"] = {k: now[k] - sent[k] for k in now if k != "runner"}
            sent.update(now)
            prov = self._provenance(
                meta, reply.get("batch_seconds", []), reply.get("batch_sizes", []), hello.get("python"),
                hello.get("numpy"), transfer, started, notes,
                load_seconds=loaded.get("load_seconds") if first else 0.0,
                startup_wait_seconds=server.startup_wait_seconds if first else 0.0,
                upload_seconds=upload, download_seconds=0.0, command_seconds=wall, wall_seconds=wall + upload,
            )
            prov.update(extra)
            if first and loaded.get("reused"):
                prov["model_reused"] = True  # the runner still held this artifact (same sha256): nothing was sent
            return values, prov

        yield infer  # the model stays loaded: the next artifact's load replaces it and deletes its file

    @staticmethod
    def _dataset_on(server: RunnerServer, rows: DatasetRows, timeout_s: float) -> dict[str, Any]:
        """Put ``rows``' dataset on ``server`` when it takes one (listed op, within its limit, not refused before);
        returns provenance: ``query_dataset`` when the rows can be named there, else ``dataset_fallback`` (why the
        queries go as float32). A refusal (``ok: false``) is remembered for this server, not raised."""
        ds = rows.dataset
        if server.dataset_key == ds.key:
            return {"query_dataset": {"sha256": ds.key, "rows": len(ds.raw), "shape": list(ds.raw.shape),
                                      "preprocess": ds.preprocess(), "sent_with_this_chunk": False}}
        server.ready()
        if not server.supports("dataset"):
            return {"dataset_fallback": "the device's runner does not list the dataset op"}
        if server.dataset_refused:
            return {"dataset_fallback": server.dataset_refused}
        if ds.raw.nbytes > server.max_dataset_bytes:
            return {"dataset_fallback": f"the {ds.raw.nbytes}-byte query dataset is over the runner's limit of "
                                        f"{server.max_dataset_bytes} bytes"}
        t0 = time.perf_counter()
        try:
            server.send_dataset(ds, timeout_s + 1e-6 * ds.raw.nbytes)
        except RunnerRefusal as exc:
            server.dataset_refused = f"the runner refused the query dataset: {exc}"
            return {"dataset_fallback": server.dataset_refused}
        return {"query_dataset": {"sha256": ds.key, "rows": len(ds.raw), "shape": list(ds.raw.shape),
                                  "preprocess": ds.preprocess(), "sent_with_this_chunk": True,
                                  "upload_seconds": time.perf_counter() - t0}}

    def _infer(self, s: _ArchiveSession, inputs: np.ndarray | DatasetRows) -> tuple[np.ndarray, dict[str, Any]]:
        """One chunk on the archive path: ONE input archive pushed, one runner process, ONE output archive pulled."""
        upload_model_s, model_bytes = s.next_chunk()
        device, artifact = s.device, s.artifact
        x = np.ascontiguousarray(inputs.inputs() if isinstance(inputs, DatasetRows) else inputs, dtype=np.float32)
        if x.ndim != 4:
            raise DeviceError(f"{artifact.id}: query inputs must be float32 [M, H, W, C], got shape {list(x.shape)}")
        started = utc_now()
        t0 = time.perf_counter()
        remote_in, remote_out = f"{s.ws}/in.npz", f"{s.ws}/out.npz"
        shared_in, shared_out = device.host_path(remote_in), device.host_path(remote_out)
        local_in, local_out = shared_in or s.tmp / "in.npz", shared_out or s.tmp / "out.npz"
        np.savez(local_in, x=x)
        in_bytes = Path(local_in).stat().st_size
        if shared_in is None:
            device.put(local_in, remote_in)
        t_up = time.perf_counter() - t0
        argv = [*self.python, s.remote_runner, "--model", s.remote_model, "--inputs", remote_in, "--out", remote_out,
                "--batch-size", str(self.batch_size), "--runtime", self.runtime, "--layout", s.layout]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        timeout = self.timeout_s + self.per_query_timeout_s * len(x)
        res = device.run(argv, timeout=timeout)
        if not res.ok:
            why = failure_detail(res.returncode, res.stderr.decode("utf-8", "replace") or res.text)
            raise DeviceError(f"{device.id}: {artifact.id} on {self.runtime} {self.runtime_version}: {why}")
        t1 = time.perf_counter()
        if shared_out is None:
            device.get(remote_out, local_out)
        t_down = time.perf_counter() - t1
        try:
            with np.load(local_out, allow_pickle=False) as z:
                values = z["values"].astype(np.float32, copy=False)
                batch_seconds = z["batch_seconds"].tolist()
                batch_sizes = z["batch_sizes"].tolist()
                meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError, EOFError, TypeError, MemoryError, zipfile.BadZipFile) as exc:
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            raise DeviceError(f"{device.id}: {artifact.id}: unreadable runner output ({why}); rerun collect") from None
        classes = output_classes(artifact)
        if values.ndim != 2 or len(values) != len(x) or values.shape[1] < 1 or (classes and values.shape[1] != classes):
            raise DeviceError(
                f"{device.id}: {artifact.id}: runner returned shape {list(values.shape)} for {len(x)} queries, "
                f"expected [{len(x)}, {classes or 'C >= 1'}]; the artifact does not match the manifest or the "
                f"device runtime is broken"
            )
        if not isinstance(meta, dict):
            meta = {}
        prov = self._provenance(
            meta, batch_seconds, batch_sizes, meta.get("python"), meta.get("numpy"), "archive files", started, s.notes,
            load_seconds=meta.get("load_seconds"), upload_seconds=upload_model_s + t_up, download_seconds=t_down,
            command_seconds=res.seconds, wall_seconds=time.perf_counter() - t0 + upload_model_s,
        )
        prov["bytes_sent"] = {"model": model_bytes, "dataset": 0, "queries": in_bytes, "headers": 0}
        return values, prov
