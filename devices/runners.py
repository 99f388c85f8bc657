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
from devices.runner_server import DatasetRows, RunnerRefusal, RunnerServer, RunnerServerPool

#: pip package that provides a runtime for each format, for error messages
INSTALL_HINT = {
    "tflite": "pip install tflite-runtime (or ai-edge-litert)",
    "onnx": "pip install onnxruntime",
    "pte": "pip install executorch",
    "ptl": "pip install torch",
}

Infer = Callable[["np.ndarray | DatasetRows"], "tuple[np.ndarray, dict[str, Any]]"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Runner:
    """Executes one artifact format on one device.

    Subclasses implement :meth:`run`; :meth:`session` lets a caller that queries the same artifact several times
    (in chunks, for resumability) pay the artifact upload once. ``name`` appears in provenance.
    """

    name = "runner"
    #: True when :meth:`session`'s ``infer`` also takes :class:`~devices.runner_server.DatasetRows` (queries named
    #: by rows of a uint8 dataset kept on the device); else callers pass float32 arrays only
    accepts_dataset_rows = False

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
            upload_model_s = time.perf_counter() - t0
            calls = [0]

            def infer(inputs: np.ndarray | DatasetRows) -> tuple[np.ndarray, dict[str, Any]]:
                calls[0] += 1
                model_bytes = Path(artifact_file).stat().st_size if calls[0] == 1 else 0
                return self._infer(device, artifact, Path(tmp), ws, remote_runner, remote_model,
                                   inputs.inputs() if isinstance(inputs, DatasetRows) else inputs, layout,
                                   notes, upload_model_s if calls[0] == 1 else 0.0, model_bytes)

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
            raise DeviceError(f"{where}: {_detail(exc, device.id)}") from None
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
                raise DeviceError(f"{where}: {_detail(exc, device.id)}") from None
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
        model_bytes: int = 0,
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
        in_bytes = Path(local_in).stat().st_size
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
        prov["bytes_sent"] = {"model": model_bytes, "dataset": 0, "queries": in_bytes, "headers": 0}
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


#: values of ``collect/audit --runner``: ``auto`` (Python where usable, else a native runner), or one forced
RUNNER_KINDS = ("auto", "python", "native")


def usable_runners(props: DeviceProperties) -> dict[str, str]:
    """Which runner kinds can run on a device, from its probed ``props``: ``{"python": line, "native": line}``.

    Each line starts with its state: ``ready:`` (what it would run with), ``not built:`` (the native bundle for the
    device's architecture is missing; the line names the command that builds it), ``unusable:`` or
    ``unavailable:`` (why not). The native runner is ready when a bundle for the device's ``uname -m`` exists and
    the device's C library is glibc (or unknown); see :func:`choose_runner` for how one is picked.
    """
    out: dict[str, str] = {}
    if props.python and props.numpy:
        rts = ", ".join(f"{k} {v}" for k, v in sorted(props.runtimes.items()))
        out["python"] = (f"ready: Python {props.python}, NumPy {props.numpy}, {rts}" if rts else
                         f"unusable: Python {props.python} has no runtime (pip install tflite-runtime / onnxruntime)")
    elif props.python:
        out["python"] = f"unusable: Python {props.python} has no NumPy (pip install numpy)"
    else:
        why = props.extra.get("probe_error")
        out["python"] = "unavailable: no Python on the device" + (f" ({why})" if why else "")
    out["native"] = _native_status(props)
    return out


def _native_status(props: DeviceProperties) -> str:
    try:
        from devices.native_runner import ARCH_OF_MACHINE, find_bundle, read_bundle_manifest
    except ModuleNotFoundError as exc:
        if exc.name != "devices.native_runner":
            raise
        return "unavailable: this installation has no native runner"
    arch = ARCH_OF_MACHINE.get((props.arch or "").lower())
    if arch is None:
        return f"unavailable: no compleak-runner build for a {(props.arch or 'device of unknown architecture')[:60]}"
    try:
        bundle = find_bundle(arch)
        manifest = read_bundle_manifest(bundle) if bundle is not None else None
    except DeviceError as exc:
        return f"unavailable: {exc}"
    if props.libc and props.libc != (manifest or {}).get("libc", "gnu"):
        return f"unavailable: {_libc_mismatch(props.libc, (manifest or {}).get('libc', 'gnu'))}"
    if bundle is None or manifest is None:
        return f"not built: compleak runners build --arch {arch}"
    rts = ", ".join(f"{k} {v}" for k, v in sorted((manifest.get("runtimes") or {}).items()) if v)
    return f"ready: {arch} bundle ({rts}; formats {', '.join(manifest.get('formats') or [])}) {bundle}"


def _libc_mismatch(libc: str | None, bundle_libc: str = "gnu") -> str:
    """Why a bundle for C library ``bundle_libc`` cannot run on a device whose C library is ``libc``."""
    if libc == "bionic":
        return ("the device is Android (bionic libc); the bundles built here need glibc: use the NDK build of "
                "compleak-runner (.github/workflows/native-runner-android.yml, COMPLEAK_NATIVE_BUNDLE=its folder) "
                "or the Android runners")
    return f"the device's C library is {libc}, the bundle is built for {bundle_libc}"


def native_runner_for(device: Device, props: DeviceProperties, fmt: str, bundle: Path | str | None = None,
                      batch_size: int = 256, threads: int | None = None,
                      pool: RunnerServerPool | None = None) -> Runner:
    """The native runner for ``fmt`` artifacts on ``device``: the bundle ``bundle`` (checked) or the built one for
    the device's ``uname -m``; a server runner where the transport keeps a command running, else the one-shot
    runner (``devices.native_oneshot``: one runner command per chunk, files in and out). One-line
    :class:`DeviceError` when it cannot run there (architecture, C library, no bundle, no runtime for ``fmt``)."""
    from devices.native_runner import NativeRunner, bundle_for, read_bundle_manifest

    try:
        path = bundle_for(props.arch, Path(bundle) if bundle else None)
    except DeviceError:
        if props.libc not in (None, "gnu"):
            raise DeviceError(f"{device.id}: no native runner: {_libc_mismatch(props.libc)}") from None
        raise
    manifest = read_bundle_manifest(path)
    if props.libc and props.libc != manifest.get("libc", "gnu"):  # an NDK bundle says "libc": "bionic"
        raise DeviceError(f"{device.id}: no native runner: {_libc_mismatch(props.libc, manifest.get('libc', 'gnu'))} "
                          f"({path})")
    machine = manifest.get("machine")
    if props.arch and machine and machine != props.arch:
        raise DeviceError(f"{device.id}: the native runner bundle {path} is built for {str(machine)[:60]}, the device "
                          f"is {props.arch[:60]}; build one with `compleak runners build --arch "
                          f"{'arm64' if props.arch == 'aarch64' else 'amd64'}`")
    if device.can_spawn:
        return NativeRunner(path, fmt, batch_size=batch_size, threads=threads, pool=pool)
    from devices.native_oneshot import NativeOneShotRunner

    return NativeOneShotRunner(path, fmt, batch_size=batch_size, threads=threads)


def choose_runner(
    device: Device,
    artifact: ArtifactRecord,
    binaries: Path | str | None = None,
    props: DeviceProperties | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    pool: RunnerServerPool | None = None,
    runner: str = "auto",
    bundle: Path | str | None = None,
) -> Runner:
    """The runner for ``artifact`` on ``device``.

    ``runner="auto"``: the Python runner when the device has Python with NumPy and a runtime for the format; on a
    device with no usable Python (none, or without NumPy), on Android the binary runners (``benchmark_model`` /
    ``executor_runner``) when they are found, else the native runner (``compleak-runner``, ``.pte``/``.tflite``) for
    the device's architecture. ``runner="python"`` / ``"native"`` force one (``collect --runner``); ``bundle`` names
    a native runner bundle instead of the built one.

    Raises :class:`DeviceError` naming the format and what to install or build when nothing can run it.
    """
    if runner not in RUNNER_KINDS:
        raise DeviceError(f"--runner {runner!r}: use one of {', '.join(RUNNER_KINDS)}")
    props = props or device.properties()
    fmt = artifact.format
    if runner != "native" and props.python and props.numpy:
        for runtime in RUNTIMES_BY_FORMAT[fmt]:
            version = props.runtimes.get(runtime)
            if version:
                py = props.extra.get("python_cmd") or device.python_command()
                if py:
                    return PythonRunner(py, runtime, version, batch_size=batch_size, threads=threads, pool=pool)
    python_usable = bool(props.python and props.numpy)
    native_error: str | None = None
    if runner == "native" or (runner == "auto" and not python_usable):
        if runner == "auto" and props.android_api is not None:
            try:
                from devices import android_runners
            except ModuleNotFoundError as exc:
                if exc.name != "devices.android_runners":
                    raise
                android_runners = None  # type: ignore[assignment]
            if android_runners is not None:
                try:
                    return android_runners.choose_android_runner(device, artifact, binaries, props)
                except DeviceError as exc:
                    android_error = exc
                try:
                    return native_runner_for(device, props, fmt, bundle, batch_size, threads, pool)
                except DeviceError:
                    raise android_error from None
        try:
            return native_runner_for(device, props, fmt, bundle, batch_size, threads, pool)
        except DeviceError as exc:
            native_error = _detail(exc, device.id)
            if runner == "native":
                raise DeviceError(f"{device.id}: the native runner cannot run {fmt} artifact {artifact.id}: "
                                  f"{native_error}") from None
    where = "its Python" if props.python else "the device (no usable Python found)"
    if props.python and not props.numpy:
        where += " (which has no NumPy, needed by the runner: pip install numpy)"
    if props.extra.get("probe_error"):
        where += f"; probing Python failed: {props.extra['probe_error']}"
    native_hint = f"; the native runner: {native_error}" if native_error else (
        "; or --runner native (.pte/.tflite)" if runner == "auto" and fmt in ("pte", "tflite") else "")
    raise DeviceError(
        f"{device.id}: nothing can run {fmt} artifact {artifact.id}: "
        f"no {'/'.join(RUNTIMES_BY_FORMAT[fmt])} in {where}; "
        f"{INSTALL_HINT[fmt]} on the device"
        + (" or supply binaries with --binaries" if props.android_api is not None else "")
        + native_hint
    )
