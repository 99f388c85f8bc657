"""Which runner runs an artifact on a device: the choice, made from the facts a transport reports
(:class:`~devices.base.DeviceProperties`), never by the transport itself.

:func:`probe` is a device's facts plus what each runner kind says about it (``props.runners``);
:func:`choose_runner` picks the runner for one artifact: the Python runner where the device has a usable Python,
else Android's binary runners (``benchmark_model`` / ``executor_runner``) or the native ``compleak-runner``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices.base import Device, DeviceProperties
from devices.errors import DeviceError, NoRunnerError
from devices.native.bundle import ARCH_OF_MACHINE, bundle_for, find_bundle, read_bundle_manifest
from devices.ondevice.compleak_runner import RUNTIMES_BY_FORMAT
from devices.runners.android import choose_android_runner
from devices.runners.base import Runner, error_detail
from devices.runners.native import NativeRunner
from devices.runners.native_oneshot import NativeOneShotRunner
from devices.runners.python import PythonRunner
from devices.runners.server import RunnerServerPool
from devices.spec import RUNNER_KINDS
from rundir import ArtifactRecord

#: the formats the native runner (compleak-runner) takes
NATIVE_FORMATS = ("pte", "tflite")


def probe(device: Device) -> DeviceProperties:
    """The device's facts (:meth:`Device.properties`) with ``runners`` filled: each runner kind's one-line state
    there (:func:`usable_runners`)."""
    props = device.properties()
    props.runners = usable_runners(props)
    return props


#: pip package that provides a runtime for each format, for error messages
INSTALL_HINT = {
    "tflite": "pip install tflite-runtime (or ai-edge-litert)",
    "onnx": "pip install onnxruntime",
    "pte": "pip install executorch",
    "ptl": "pip install torch",
}


def usable_runners(props: DeviceProperties) -> dict[str, str]:
    """Which runner kinds can run on a device, from its probed ``props``: ``{"python": line, "native": line}``.

    Each line starts with its state: ``ready:`` (what it would run with), ``not built:`` (the native bundle for the
    device's architecture is missing; the line names the command that builds it), ``unusable:`` or
    ``unavailable:`` (why not). The native runner is ready when a bundle for the device's ``uname -m`` exists and
    can start there: it carries its own loader and C library (``"loader": "bundled"``, any Linux device), or it is
    built for the device's C library (an NDK bundle on Android); see :func:`choose_runner` for how one is picked.
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
    arch = ARCH_OF_MACHINE.get((props.arch or "").lower())
    if arch is None:
        return f"unavailable: no compleak-runner build for a {(props.arch or 'device of unknown architecture')[:60]}"
    try:
        bundle = find_bundle(arch)
        manifest = read_bundle_manifest(bundle) if bundle is not None else None
    except DeviceError as exc:
        return f"unavailable: {exc}"
    if bundle is None or manifest is None:
        return f"not built: compleak runners build --arch {arch}"
    if not _libc_fits(props.libc, manifest):
        return f"unavailable: {_libc_mismatch(props.libc, manifest.get('libc', 'gnu'))}"
    rts = ", ".join(f"{k} {v}" for k, v in sorted((manifest.get("runtimes") or {}).items()) if v)
    own = f"; its own glibc {manifest.get('glibc')}" if manifest.get("loader") == "bundled" else ""
    return f"ready: {arch} bundle ({rts}; formats {', '.join(manifest.get('formats') or [])}{own}) {bundle}"


def _libc_fits(libc: str | None, manifest: dict[str, Any]) -> bool:
    """Whether a bundle with ``manifest`` starts on a device whose C library is ``libc`` (None: unknown): always
    when it carries its own loader and C library (``"loader": "bundled"``: started through ``lib/ld-linux-*``, the
    device's C library is never used), else when it is built for that C library (or the device's is unknown)."""
    return manifest.get("loader") == "bundled" or not libc or libc == manifest.get("libc", "gnu")


def _libc_mismatch(libc: str | None, bundle_libc: str = "gnu") -> str:
    """Why a bundle without its own loader, built for C library ``bundle_libc``, cannot run on a device whose C
    library is ``libc``."""
    fix = ("rebuild it with `compleak runners build --force` (bundles now carry their own loader and C library), use "
           "the NDK build (.github/workflows/native-runner-android.yml, COMPLEAK_NATIVE_BUNDLE=its folder)")
    if libc == "bionic":
        return (f"the device is Android (bionic libc) and this bundle has no loader of its own: {fix} or the Android "
                f"runners")
    return f"the device's C library is {libc}, the bundle is built for {bundle_libc} without its own loader: {fix}"


def native_runner_for(device: Device, props: DeviceProperties, fmt: str, bundle: Path | str | None = None,
                      batch_size: int = 256, threads: int | None = None,
                      pool: RunnerServerPool | None = None) -> Runner:
    """The native runner for ``fmt`` artifacts on ``device``: the bundle ``bundle`` (checked) or the built one for
    the device's ``uname -m``; a server runner where the transport keeps a command running, else the one-shot
    runner (``devices.runners.native_oneshot``: one runner command per chunk, files in and out). One-line
    :class:`DeviceError` when it cannot run there (architecture, C library, no bundle, no runtime for ``fmt``)."""
    path = bundle_for(props.arch, Path(bundle) if bundle else None)
    manifest = read_bundle_manifest(path)
    if not _libc_fits(props.libc, manifest):  # an NDK bundle says "libc": "bionic"; older bundles had no loader
        raise DeviceError(f"{device.id}: no native runner: {_libc_mismatch(props.libc, manifest.get('libc', 'gnu'))} "
                          f"({path})")
    machine = manifest.get("machine")
    if props.arch and machine and machine != props.arch:
        raise DeviceError(f"{device.id}: the native runner bundle {path} is built for {str(machine)[:60]}, the device "
                          f"is {props.arch[:60]}; build one with `compleak runners build --arch "
                          f"{'arm64' if props.arch == 'aarch64' else 'amd64'}`")
    if device.can_spawn:
        return NativeRunner(path, fmt, batch_size=batch_size, threads=threads, pool=pool)
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
                return choose_android_runner(device, artifact, binaries, props)
            except DeviceError as exc:
                android_error = exc
            try:
                return native_runner_for(device, props, fmt, bundle, batch_size, threads, pool)
            except DeviceError:
                raise android_error from None
        try:
            return native_runner_for(device, props, fmt, bundle, batch_size, threads, pool)
        except DeviceError as exc:
            native_error = error_detail(exc, device.id)
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
    error = NoRunnerError if fmt not in NATIVE_FORMATS else DeviceError  # a native format: build the bundle
    raise error(
        f"{device.id}: nothing can run {fmt} artifact {artifact.id}: "
        f"no {'/'.join(RUNTIMES_BY_FORMAT[fmt])} in {where}; "
        f"{INSTALL_HINT[fmt]} on the device"
        + (" or supply binaries with --binaries" if props.android_api is not None else "")
        + native_hint
    )
