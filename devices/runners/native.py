"""The native runner on the host side: :class:`NativeRunnerServer` pushes the bundle (built by
:mod:`devices.native.bundle`) into the job workspace once per collection and spawns ``bin/compleak-runner --serve``;
(through the bundle's own loader, :func:`~devices.native.bundle.launch_argv`, so the device's C library does not
matter); it is a :class:`~devices.runners.server.RunnerServer` (same framing, same checks of every reply byte), so
``collect``, resumability and provenance are unchanged. :class:`NativeRunner` is the
:class:`~devices.runners.base.Runner` that uses it (provenance ``runner: native``). See docs/native.md.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from devices.base import Device, DeviceProcess
from devices.errors import DeviceError
from devices.native.bundle import (
    BINARY,
    BUNDLE_NAME,
    NATIVE_FORMATS,
    RUNTIME_OF_FORMAT,
    BundleError,
    launch_argv,
    read_bundle_manifest,
)
from devices.runners.base import Infer
from devices.runners.python import PythonRunner
from devices.runners.server import RunnerRefusal, RunnerServer, RunnerServerPool
from devices.spec import DEFAULT_START_TIMEOUT_S
from rundir import ArtifactRecord, sha256_file


def check_bundle_files(bundle: Path, manifest: dict[str, Any]) -> None:
    """Every file ``manifest.json`` lists is in ``bundle`` with the sha256 it lists; raises one line naming the
    first file that is missing or differs (a replaced binary or library is never pushed)."""
    for rel, digest in manifest["files"].items():
        local = Path(bundle) / rel
        if not local.is_file():
            raise BundleError(f"{bundle}: {rel} is missing; rebuild the bundle with `compleak runners build --force`")
        if sha256_file(local) != digest:
            raise BundleError(f"{bundle}: {rel} does not match its sha256 in manifest.json (tampered with or damaged); "
                              f"rebuild the bundle with `compleak runners build --force`")


def push_bundle(device: Device, bundle: Path, workspace: str, subfolder: str = "runner") -> list[str]:
    """Copy the bundle's files into ``<workspace>/runner/`` (``<workspace>/<subfolder>``) on ``device``; return the command that starts the runner
    there (:func:`~devices.native.bundle.launch_argv`: through the bundled loader when the bundle has one).

    Every file is checked against its sha256 in the manifest first (:func:`check_bundle_files`); only the files the
    manifest lists are sent, each to ``runner/bin`` or ``runner/lib`` (names checked by :func:`read_bundle_manifest`),
    and ``manifest.json`` beside them, against which the binary checks its own files again when it starts (so a file
    damaged on the way or on the device is refused there too). Nothing lands outside the workspace.
    """
    manifest = read_bundle_manifest(bundle)
    check_bundle_files(bundle, manifest)
    remote = f"{workspace.rstrip('/')}/{subfolder}" if subfolder else workspace.rstrip("/")
    device.run(["mkdir", "-p", "--", f"{remote}/bin", f"{remote}/lib"], timeout=60).check(
        device.id, "creating the runner folder in the workspace")
    for rel in manifest["files"]:
        device.put(Path(bundle) / rel, f"{remote}/{rel}")
    device.put(Path(bundle) / "manifest.json", f"{remote}/manifest.json")
    executables = [f"{remote}/{BINARY}"]
    if manifest.get("loader") == "bundled":  # lib/ld-linux-*: the program the device starts
        executables.append(f"{remote}/{manifest['loader_file']}")
    device.run(["chmod", "755", "--", *executables], timeout=60).check(device.id, "making the runner executable")
    return launch_argv(remote, manifest)


def _device_digests(device: Device, folder: str, names: list[str]) -> dict[str, str] | None:
    """``{name: sha256}`` of the files ``names`` under ``folder`` as the device's ``sha256sum`` computes them (empty
    when the folder is missing or a file unreadable); None when the device has no ``sha256sum``."""
    script = ('command -v sha256sum >/dev/null 2>&1 || { echo no-sha256sum; exit 0; }; '
              'cd -- "$1" 2>/dev/null && shift && exec sha256sum -- "$@"')
    res = device.run(["sh", "-c", script, "sh", folder, *names], timeout=120)
    if res.text.strip() == "no-sha256sum":
        return None
    found = {}
    for line in res.text.splitlines()[: len(names) + 10] if res.ok else []:
        digest, _, name = line.strip().partition("  ")
        if len(digest) == 64 and name in names:
            found[name] = digest.lower()
    return found


def install_bundle(device: Device, bundle: Path) -> tuple[list[str], bool]:
    """The bundle installed ONCE per device, in ``<workspace base>/runners/<arch>-<key>`` (``/data/local/tmp/compleak
    /runners/...`` over ADB); returns (the command that starts it, whether it was pushed now).

    An installed copy is reused only when the device's ``sha256sum`` of every file the manifest lists, and of
    ``manifest.json``, equals the host's (a device without ``sha256sum`` gets the push every time); otherwise the
    files are pushed (:func:`push_bundle`, host-side check first) into a fresh folder beside it, checked the same way
    on the device, and moved into place (``mv`` of a folder: a collection running at the same time sees the old copy
    or the new one, never half of one). The runner checks its files against ``manifest.json`` again when it starts.
    """
    manifest = read_bundle_manifest(bundle)
    check_bundle_files(bundle, manifest)
    want = dict(manifest["files"], **{"manifest.json": sha256_file(Path(bundle) / "manifest.json")})
    names = sorted(want)
    base = device.workspace_base().rstrip("/")
    tag = f"{manifest.get('arch', 'native')}-{manifest.get('key', 'bundle')}"
    final = f"{base}/runners/" + "".join(c for c in tag if c.isascii() and (c.isalnum() or c in "._-"))[:48]
    executables = [BINARY] + ([manifest["loader_file"]] if manifest.get("loader") == "bundled" else [])
    if _device_digests(device, final, names) == want:
        device.run(["chmod", "755", "--", *(f"{final}/{e}" for e in executables)], timeout=60).check(
            device.id, "making the runner executable")
        return launch_argv(final, manifest), False
    res = device.run(["sh", "-c", 'mkdir -p -- "$1" && exec mktemp -d "$1/.new.XXXXXXXX"', "sh", f"{base}/runners"],
                     timeout=60)
    res.check(device.id, f"creating a folder for the runner under {base}/runners")
    fresh = res.text.strip().splitlines()[-1] if res.text.strip() else ""
    if not fresh.startswith(f"{base}/runners/.new."):
        raise DeviceError(f"{device.id}: mktemp returned {fresh!r}, outside {base}/runners")
    try:
        push_bundle(device, bundle, fresh, subfolder="")
        got = _device_digests(device, fresh, names)
        bad = [] if got is None else [n for n in names if got.get(n) != want[n]]  # None: the runner's check only
        if bad:
            raise DeviceError(f"{device.id}: {bad[0]} of the runner bundle has another sha256 on the device than on "
                              f"the host after the push ({len(bad)} file(s)); is the device's storage full?")
        device.run(["sh", "-c", 'rm -rf -- "$2" && mv -- "$1" "$2"', "sh", fresh, final], timeout=120).check(
            device.id, f"moving the runner bundle into {final}")
    finally:
        try:
            device.run(["rm", "-rf", "--", fresh], timeout=60)  # gone after the mv; a failed push's leftovers
        except DeviceError:
            pass  # the transport is gone; the error that got us here matters more
    return launch_argv(final, manifest), True


class NativeRunnerServer(RunnerServer):
    """``bin/compleak-runner --serve`` on ``device`` (through the bundled loader when the bundle has one): the bundle
    is pushed into the job workspace at :meth:`start`.

    Everything after the start (hello, load, infer, the checks of every reply) is :class:`RunnerServer`'s.
    """

    def __init__(self, device: Device, bundle: Path, hello_timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        super().__init__(device, python=[BUNDLE_NAME], hello_timeout_s=hello_timeout_s)
        self.bundle = Path(bundle)
        self.manifest = read_bundle_manifest(self.bundle)
        self.upload_seconds = 0.0  # pushing the bundle

    def start(self) -> "NativeRunnerServer":
        """Create the workspace, push the bundle, spawn the binary (does not wait for its hello)."""
        try:
            self.workspace = self._stack.enter_context(self.device.workspace())
            t0 = time.perf_counter()
            command = push_bundle(self.device, self.bundle, self.workspace)
            self.upload_seconds = time.perf_counter() - t0
            if "runner" in getattr(self, "bytes_sent", {}):  # the bundle stands where the Python runner's source does
                self.bytes_sent["runner"] += sum((self.bundle / rel).stat().st_size
                                                 for rel in [*self.manifest["files"], "manifest.json"])
            self._proc = self.device.spawn([*command, "--serve"], label=BUNDLE_NAME)
        except DeviceError as exc:  # reported when the runner is first needed, as the Python runner's start
            self._start_error = exc if isinstance(exc, BundleError) else DeviceError(
                f"{self.device.id}: cannot start the native runner: {exc}")
        return self

    def ready(self) -> DeviceProcess:
        if self._start_error is not None:
            raise self._start_error
        try:
            proc = super().ready()
        except RunnerRefusal as exc:  # an error instead of the hello: its start-up check (the bundle's sha256 list)
            self._stop()
            self._start_error = BundleError(f"{self.device.id}: the native runner refused to start: {exc}")
            raise self._start_error from None
        self.require_runner("native")
        return proc

    def _infer(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._infer(*args, **kwargs)
        except RunnerRefusal:
            self._loaded = None  # the runner drops a model that failed while running: the next load is not skipped
            raise


def native_server(pool: RunnerServerPool | None, device: Device, bundle: Path) -> NativeRunnerServer | None:
    """The collection's native server for ``bundle`` (started now if none is alive); None without a pool.

    It is filed in the pool under a key no Python command can have, so the pool closes it with the others.
    """
    if pool is None:
        return None
    key = (f"<{BUNDLE_NAME}>", str(Path(bundle).resolve()))
    server = pool.get_or_start(key, lambda: NativeRunnerServer(device, bundle, hello_timeout_s=pool.start_timeout_s))
    assert isinstance(server, NativeRunnerServer)  # the key is the bundle's: only native servers are filed there
    return server


class NativeRunner(PythonRunner):
    """Runs ``.tflite`` (LiteRT C API) and ``.pte`` (ExecuTorch C++ runtime) through ``compleak-runner``.

    Provenance is the Python runner's with ``runner: native``, ``runtime: litert|executorch``, the runtime's
    version from the bundle, and ``native_runner_version``; ``device_python``/``device_numpy`` are None.
    """

    name = "native"

    def __init__(self, bundle: Path, fmt: str, batch_size: int = 256, threads: int | None = None,
                 timeout_s: float = 600.0, per_query_timeout_s: float = 0.05,
                 pool: RunnerServerPool | None = None) -> None:
        if fmt not in RUNTIME_OF_FORMAT:
            raise DeviceError(f"the native runner runs {' and '.join(NATIVE_FORMATS)} artifacts, not {fmt}; "
                              f"use --runner python on a device with Python")
        self.bundle = Path(bundle)
        self.manifest = read_bundle_manifest(self.bundle)
        runtime = RUNTIME_OF_FORMAT[fmt]
        version = (self.manifest.get("runtimes") or {}).get(runtime)
        if fmt not in (self.manifest.get("formats") or []) or not version:
            raise BundleError(f"{self.bundle}: this native runner bundle has no {runtime} runtime for {fmt} artifacts; "
                              f"rebuild it on a host with {'executorch' if fmt == 'pte' else 'ai-edge-litert'} "
                              f"installed (`compleak runners build --force`)")
        super().__init__([], runtime, str(version), batch_size=batch_size, threads=threads, timeout_s=timeout_s,
                         per_query_timeout_s=per_query_timeout_s, pool=pool)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "native_runner_version": self.manifest.get("runner_version")}

    def check(self, artifact_file: Path, artifact: ArtifactRecord, device: Device) -> list[str]:
        return []

    @contextmanager
    def session(self, device: Device, artifact_file: Path, artifact: ArtifactRecord) -> Iterator[Infer]:
        if not device.can_spawn:
            raise DeviceError(f"{device.id}: the native runner needs a transport that keeps a command running "
                              f"(local, ssh, adb); use --runner python here")
        layout = str(getattr(artifact.inputs[0], "layout", None) or "auto") if artifact.inputs else "auto"
        if layout not in ("NHWC", "NCHW"):
            layout = "auto"
        with ExitStack() as stack:
            server = native_server(self.pool, device, self.bundle)
            if server is None:
                server = stack.enter_context(NativeRunnerServer(device, self.bundle))
            first = [True]
            for infer in self._served(device, server, Path(artifact_file), artifact, layout, []):
                def native_infer(x: Any, _infer: Infer = infer) -> Any:
                    values, prov = _infer(x)
                    hello = server.hello or {}
                    prov["native_runner_version"] = hello.get("runner_version")
                    prov["device_machine"] = hello.get("machine")
                    if first[0] and server.upload_seconds:  # the bundle push, paid once per collection
                        prov["bundle_upload_seconds"] = server.upload_seconds
                        server.upload_seconds = 0.0
                    first[0] = False
                    return values, prov

                yield native_infer
