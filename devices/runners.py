"""Runners: how one artifact format executes on one kind of device.

:class:`PythonRunner` runs the single-file on-device runner (``devices/ondevice/compleak_runner.py``) with the
device's Python. Where the transport can keep a command running (local, ssh: ``Device.can_spawn``) it talks to one
``--serve`` process (``devices.runner_server``; shared by a whole collection through a :class:`RunnerServerPool`):
queries stream in over stdin and are inferred while the rest is in transit. Elsewhere (adb) it pushes the artifact
and ONE input archive into a fresh workspace, runs the whole query batch in one process and pulls ONE output archive
back. Devices without Python (Android phones) get the binary runners of ``devices.android_runners``
(``benchmark_model``, ``executor_runner``), chosen by :func:`choose_runner`.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from compleak.rundir import ArtifactRecord
from devices.base import Device, DeviceProperties, failure_detail
from devices.errors import DeviceError
from devices.ondevice import RUNNER_FILENAME, runner_path
from devices.ondevice.compleak_runner import RUNTIMES_BY_FORMAT
from devices.runner_server import RunnerServer, RunnerServerPool

#: pip package that provides a runtime for each format, for error messages
INSTALL_HINT = {
    "tflite": "pip install tflite-runtime (or ai-edge-litert)",
    "onnx": "pip install onnxruntime",
    "pte": "pip install executorch",
    "ptl": "pip install torch",
}

Infer = Callable[[np.ndarray], "tuple[np.ndarray, dict[str, Any]]"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Runner:
    """Executes one artifact format on one device.

    Subclasses implement :meth:`run`; :meth:`session` lets a caller that queries the same artifact several times
    (in chunks, for resumability) pay the artifact upload once. ``name`` appears in provenance.
    """

    name = "runner"

    def describe(self) -> dict[str, Any]:
        """What this runner is, for provenance (runtime name/version etc.)."""
        return {"runner": self.name}

    def run(
        self, device: Device, artifact_file: Path, artifact: ArtifactRecord, inputs: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Outputs float32 [M, C] for ``inputs`` float32 [M, H, W, C] (NHWC), and a provenance dict."""
        with self.session(device, artifact_file, artifact) as infer:
            return infer(inputs)

    @contextmanager
    def session(self, device: Device, artifact_file: Path, artifact: ArtifactRecord) -> Iterator[Infer]:
        """A callable ``infer(inputs) -> (values, provenance)`` bound to one artifact on one device."""
        yield lambda x: self.run(device, artifact_file, artifact, x)


class PythonRunner(Runner):
    """Runs ``compleak_runner.py`` with the device's Python and the given runtime."""

    name = "python"

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
            upload_model_s = time.perf_counter() - t0
            calls = [0]

            def infer(inputs: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
                calls[0] += 1
                return self._infer(device, artifact, Path(tmp), ws, remote_runner, remote_model, inputs, layout,
                                   notes, upload_model_s if calls[0] == 1 else 0.0)

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
        """The body of :meth:`session` on a runner server: load once, one ``infer`` request per call."""
        where = f"{device.id}: {artifact.id} on {self.runtime} {self.runtime_version}"
        try:
            loaded = server.load(artifact_file, artifact.format, self.runtime, self.threads, layout, self.timeout_s)
        except DeviceError as exc:
            raise DeviceError(f"{where}: {_detail(exc, device.id)}") from None
        calls = [0]

        def infer(inputs: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
            x = np.ascontiguousarray(inputs, dtype=np.float32)
            if x.ndim != 4:
                raise DeviceError(f"{artifact.id}: query inputs must be float32 [M, H, W, C], got {list(x.shape)}")
            calls[0] += 1
            first = calls[0] == 1
            started = utc_now()
            t0 = time.perf_counter()
            try:
                values, reply = server.infer(x, self.batch_size, self.timeout_s + self.per_query_timeout_s * len(x),
                                             n_classes=output_classes(artifact))
            except DeviceError as exc:
                raise DeviceError(f"{where}: {_detail(exc, device.id)}") from None
            wall = time.perf_counter() - t0
            meta = reply.get("meta", {})
            hello = server.hello or {}
            upload = loaded.get("upload_seconds", 0.0) if first else 0.0
            prov = self._provenance(
                meta, reply.get("batch_seconds", []), reply.get("batch_sizes", []), hello.get("python"),
                hello.get("numpy"), "runner server (queries streamed over stdin, outputs over stdout)", started, notes,
                load_seconds=loaded.get("load_seconds") if first else 0.0,
                startup_wait_seconds=server.startup_wait_seconds if first else 0.0,
                upload_seconds=upload, download_seconds=0.0, command_seconds=wall, wall_seconds=wall + upload,
            )
            return values, prov

        yield infer  # the model stays loaded: the next artifact's load replaces it and deletes its file

    def _infer(
        self,
        device: Device,
        artifact: ArtifactRecord,
        tmp: Path,
        ws: str,
        remote_runner: str,
        remote_model: str,
        inputs: np.ndarray,
        layout: str,
        notes: list[str],
        upload_model_s: float,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        if x.ndim != 4:
            raise DeviceError(f"{artifact.id}: query inputs must be float32 [M, H, W, C], got shape {list(x.shape)}")
        started = utc_now()
        t0 = time.perf_counter()
        remote_in, remote_out = f"{ws}/in.npz", f"{ws}/out.npz"
        shared_in, shared_out = device.host_path(remote_in), device.host_path(remote_out)
        local_in, local_out = shared_in or tmp / "in.npz", shared_out or tmp / "out.npz"
        np.savez(local_in, x=x)
        if shared_in is None:
            device.put(local_in, remote_in)
        t_up = time.perf_counter() - t0
        argv = [*self.python, remote_runner, "--model", remote_model, "--inputs", remote_in, "--out", remote_out,
                "--batch-size", str(self.batch_size), "--runtime", self.runtime, "--layout", layout]
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
            meta, batch_seconds, batch_sizes, meta.get("python"), meta.get("numpy"), "archive files", started, notes,
            load_seconds=meta.get("load_seconds"), upload_seconds=upload_model_s + t_up, download_seconds=t_down,
            command_seconds=res.seconds, wall_seconds=time.perf_counter() - t0 + upload_model_s,
        )
        return values, prov


def output_classes(artifact: ArtifactRecord) -> int | None:
    """Values per query C of the artifact's first output as the manifest states it (``[N, d1, ...]``: the product of
    the non-batch dimensions, as the runner flattens them), else None (a dynamic or missing dimension)."""
    shape = artifact.outputs[0].shape if artifact.outputs else []
    if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
        return None
    return int(np.prod(shape[1:]))


def _detail(exc: DeviceError, device_id: str) -> str:
    """An error's message without its leading ``<device id>: `` (the caller puts the artifact there)."""
    text = str(exc)
    return text[len(device_id) + 2:] if text.startswith(f"{device_id}: ") else text


def choose_runner(
    device: Device,
    artifact: ArtifactRecord,
    binaries: Path | str | None = None,
    props: DeviceProperties | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    pool: RunnerServerPool | None = None,
) -> Runner:
    """The runner for ``artifact`` on ``device``: the Python runner when the device has Python and a runtime for the
    format, else a binary runner (``benchmark_model`` / ``executor_runner``) for Android devices.

    Raises :class:`DeviceError` naming the format and what to install when nothing can run it.
    """
    props = props or device.properties()
    fmt = artifact.format
    if props.python and props.numpy:
        for runtime in RUNTIMES_BY_FORMAT[fmt]:
            version = props.runtimes.get(runtime)
            if version:
                py = props.extra.get("python_cmd") or device.python_command()
                if py:
                    return PythonRunner(py, runtime, version, batch_size=batch_size, threads=threads, pool=pool)
    if props.android_api is not None:
        try:
            from devices import android_runners
        except ModuleNotFoundError as exc:
            if exc.name != "devices.android_runners":
                raise
            android_runners = None  # type: ignore[assignment]
        if android_runners is not None:
            return android_runners.choose_android_runner(device, artifact, binaries, props)
    where = "its Python" if props.python else "the device (no usable Python found)"
    if props.python and not props.numpy:
        where += " (which has no NumPy, needed by the runner: pip install numpy)"
    if props.extra.get("probe_error"):
        where += f"; probing Python failed: {props.extra['probe_error']}"
    raise DeviceError(
        f"{device.id}: nothing can run {fmt} artifact {artifact.id}: "
        f"no {'/'.join(RUNTIMES_BY_FORMAT[fmt])} in {where}; "
        f"{INSTALL_HINT[fmt]} on the device"
        + (" or supply binaries with --binaries" if props.android_api is not None else "")
    )
