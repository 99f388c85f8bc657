"""The native runner: ``compleak-runner``, a C++ binary that answers the runner protocol without Python on the device.

Its sources ship in this package (``devices/native/``: CMake project, ``src/*.cpp``); :func:`build_bundle` compiles
them against the runtimes of the installed wheels (ExecuTorch's C++ runtime from ``executorch``, LiteRT's C API
``libLiteRt.so`` from ``ai-edge-litert``) into a self-contained bundle::

    <cache>/runners/<arch>/<key>/compleak-runner/
        bin/compleak-runner          RUNPATH $ORIGIN/../lib
        lib/libcompleak_executorch.so, libexecutorch*.so, libLiteRt.so
        manifest.json                arch, versions, formats, sha256 of every file
    <cache>/runners/<arch>/<key>/compleak-runner-linux-<arch>.tar.gz

``<cache>`` is :func:`devices.known_devices.cache_dir`; ``<key>`` hashes the sources, the runtime versions and the
build options, so a changed source or wheel gives a fresh bundle and :func:`find_bundle` finds the current one
without building.

On the host, :class:`NativeRunnerServer` pushes the bundle into the job workspace once per collection and spawns
``bin/compleak-runner --serve``; it is a :class:`~devices.runner_server.RunnerServer` (same framing, same checks of
every reply byte), so ``collect``, resumability and provenance are unchanged. :class:`NativeRunner` is the
:class:`~devices.runners.Runner` that uses it (provenance ``runner: native``). See docs/native.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from compleak.rundir import ArtifactRecord, sha256_file
from devices.base import Device, DeviceProcess
from devices.errors import DeviceError
from devices.runner_server import DEFAULT_START_TIMEOUT_S, RunnerServer, RunnerServerPool
from devices.runners import Infer, PythonRunner

#: the CMake project of the binary (package data)
SOURCE_DIR = Path(__file__).with_name("native")
#: bundle architectures and the ``uname -m`` names they serve
ARCH_OF_MACHINE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
MACHINE_OF_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}
BUNDLE_NAME = "compleak-runner"
BINARY = "bin/compleak-runner"
#: runtime the native runner uses for each format (what it reports in provenance)
RUNTIME_OF_FORMAT = {"tflite": "litert", "pte": "executorch"}
NATIVE_FORMATS = tuple(RUNTIME_OF_FORMAT)
#: largest manifest.json read from a bundle (bytes)
MAX_MANIFEST_BYTES = 1 << 20
#: the ExecuTorch wheel's libraries the plugin needs (the rest of lib/ is not bundled)
_ET_LIB_PREFIX = "libexecutorch"


class BundleError(DeviceError):
    """The native runner bundle cannot be built or is unusable; one line naming the fix."""


# --------------------------------------------------------------------------------------------- bundle build


def host_arch() -> str:
    """This host's bundle architecture (``amd64`` | ``arm64``)."""
    machine = platform.machine().lower()
    if machine not in ARCH_OF_MACHINE:
        raise BundleError(f"this host's architecture {machine!r} has no native runner build; use amd64 or arm64")
    return ARCH_OF_MACHINE[machine]


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _version_beside(package_dir: Path, dist: str) -> str | None:
    """The version of an unpacked wheel from its ``<dist>-<version>.dist-info`` folder beside ``package_dir``."""
    found = sorted(Path(package_dir).parent.glob(f"{dist}-*.dist-info"))
    return found[-1].name[len(dist) + 1 : -len(".dist-info")] if found else None


def runtime_sources(executorch_root: Path | None = None, litert_lib: Path | None = None) -> dict[str, Any]:
    """Where the runtimes come from: ``{"executorch_root", "executorch", "litert_lib", "litert"}`` (paths or None,
    versions or None). Defaults: the installed ``executorch`` and ``ai-edge-litert`` wheels; for folders given
    explicitly (an unpacked wheel of another architecture) the version is the ``.dist-info`` beside them."""
    et_root = Path(executorch_root) if executorch_root else _package_dir("executorch")
    if et_root is not None and not (et_root / "share" / "cmake" / "executorch-config.cmake").is_file():
        if executorch_root:
            raise BundleError(f"{et_root}: not an executorch package folder (no share/cmake/executorch-config.cmake)")
        et_root = None
    lt = Path(litert_lib) if litert_lib else None
    if lt is None:
        pkg = _package_dir("ai_edge_litert")
        lt = pkg / "libLiteRt.so" if pkg is not None else None
    if lt is not None and not lt.is_file():
        if litert_lib:
            raise BundleError(f"{lt}: no such libLiteRt.so")
        lt = None
    et_version = lt_version = None
    if et_root:
        et_version = (_version_beside(et_root, "executorch") if executorch_root else None) or _dist_version(
            "executorch") or "unknown"
    if lt:
        lt_version = (_version_beside(lt.parent, "ai_edge_litert") if litert_lib else None) or _dist_version(
            "ai-edge-litert") or "unknown"
    return {"executorch_root": et_root, "executorch": et_version, "litert_lib": lt, "litert": lt_version}


def _sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in SOURCE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(SOURCE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _runner_version() -> str:
    return _dist_version("compleak-harness") or "0.1.0"


def _bundle_key(arch: str, sources: dict[str, Any], cmake_args: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (arch, _sources_digest(), _runner_version(), str(sources["executorch_root"]), sources["executorch"],
                 str(sources["litert_lib"]), sources["litert"], *cmake_args):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:16]


def runners_cache() -> Path:
    """``<cache>/runners``: bundles by architecture."""
    from devices.known_devices import cache_dir

    return cache_dir() / "runners"


#: bundles kept per architecture (the newest; each is about 30 MiB): several virtual environments -- and so several
#: runtime paths in the bundle key -- may share one cache, and each should find its own without a rebuild
KEEP_BUNDLES = 3


def prune_bundles(arch: str, keep: int = KEEP_BUNDLES) -> list[Path]:
    """Remove all but the ``keep`` newest bundles of ``arch`` from the cache (by build time), with their build logs;
    the one ``current.json`` names always stays. Returns the folders removed. Only ``<cache>/runners/<arch>/<key>``
    folders that hold a bundle are candidates; half-built ``.build-*`` folders of a running build are left alone."""
    base = runners_cache() / arch
    if not base.is_dir():
        return []
    try:
        current = str(json.loads((base / "current.json").read_text())["key"])
    except (OSError, ValueError, KeyError, TypeError):
        current = ""
    bundles = [d for d in base.iterdir() if d.is_dir() and not d.is_symlink() and re.fullmatch(r"[0-9a-f]{16}", d.name)
               and (d / BUNDLE_NAME / "manifest.json").is_file()]
    bundles.sort(key=lambda d: (d / BUNDLE_NAME / "manifest.json").stat().st_mtime_ns, reverse=True)
    removed = []
    for d in bundles[max(keep, 1):]:
        if d.name == current:
            continue
        shutil.rmtree(d, ignore_errors=True)
        (base / f"build-{d.name}.log").unlink(missing_ok=True)
        removed.append(d)
    return removed


def find_bundle(arch: str | None = None, executorch_root: Path | None = None, litert_lib: Path | None = None,
                cmake_args: Sequence[str] = ()) -> Path | None:
    """The bundle directory built from the current sources and runtimes for ``arch`` (default: this host's), or
    None when it has not been built (``compleak runners build``). ``COMPLEAK_NATIVE_BUNDLE`` names one directly."""
    if os.environ.get("COMPLEAK_NATIVE_BUNDLE"):
        path = Path(os.environ["COMPLEAK_NATIVE_BUNDLE"]).expanduser()
        read_bundle_manifest(path)  # checked: a wrong path says so now, in one line
        return path
    arch = arch or host_arch()
    try:
        key = _bundle_key(arch, runtime_sources(executorch_root, litert_lib), cmake_args)
    except BundleError:
        key = ""
    path = runners_cache() / arch / key / BUNDLE_NAME
    if key and (path / "manifest.json").is_file():
        return path
    if arch == host_arch() or executorch_root or litert_lib or cmake_args:
        return None
    # another architecture's bundle is built from that architecture's wheels, which the key above cannot see:
    # the last one built (current.json), when it was built from these sources
    try:
        current = json.loads((runners_cache() / arch / "current.json").read_text())
        path = runners_cache() / arch / str(current["key"]) / BUNDLE_NAME
        manifest = read_bundle_manifest(path)
    except (OSError, ValueError, KeyError, TypeError, BundleError):
        return None
    ok = manifest.get("arch") == arch and manifest.get("sources_sha256") == _sources_digest()
    return path if ok and "/" not in str(current["key"]) else None


def read_bundle_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's ``manifest.json`` (bounded read), checked to name a binary and only files inside the bundle."""
    path = Path(bundle) / "manifest.json"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(raw) if len(raw) <= MAX_MANIFEST_BYTES else None
    except (OSError, ValueError, RecursionError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or BINARY not in files or not all(
        isinstance(k, str) and k.count("/") == 1 and k.split("/")[0] in ("bin", "lib")
        and k.split("/")[1] not in ("", ".", "..") for k in files
    ):
        raise BundleError(f"{bundle}: not a compleak-runner bundle (missing or invalid manifest.json); "
                          f"rebuild it with `compleak runners build`")
    return manifest


def _run(argv: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        res = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd)
    if res.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        errs = [ln for ln in lines if "error" in ln.lower()] or lines
        last = " ".join((errs[-1] if errs else "").split())[:200]
        raise BundleError(f"building the native runner failed ({Path(argv[0]).name} exited {res.returncode}: "
                          f"{last}); full log: {log}")


def _needed(lib: Path) -> list[str]:
    """The DT_NEEDED names of an ELF file (``readelf -d``)."""
    res = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True)
    return [ln.split("[", 1)[1].rstrip("]").strip() for ln in res.stdout.splitlines()
            if "(NEEDED)" in ln and "[" in ln]


def build_bundle(arch: str | None = None, *, force: bool = False, jobs: int = 2, executorch_root: Path | None = None,
                 litert_lib: Path | None = None, toolchain_file: Path | None = None, cmake_args: Sequence[str] = (),
                 log: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) the native runner bundle for ``arch``; return the bundle directory.

    Args:
        arch: ``amd64`` or ``arm64`` (default: this host's). Another architecture than the host's needs
            ``executorch_root`` / ``litert_lib`` of that architecture's wheels and a ``toolchain_file``.
        force: rebuild even when the bundle for these sources and runtimes exists.
        jobs: parallel compile jobs.
        executorch_root: the ``executorch/`` folder of the wheel to build against (default: the installed one;
            None found: a bundle without ``.pte`` support).
        litert_lib: ``libLiteRt.so`` to bundle (default: the installed ai-edge-litert's; None: no ``.tflite``).
        toolchain_file: CMake toolchain file (cross builds).
        cmake_args: extra ``-D...`` arguments.
        log: called with one line per step.
    """
    say = log or (lambda _msg: None)
    arch = arch or host_arch()
    if arch not in MACHINE_OF_ARCH:
        raise BundleError(f"unknown architecture {arch!r}; use one of {', '.join(MACHINE_OF_ARCH)}")
    if arch != host_arch() and not toolchain_file:
        raise BundleError(f"building the {arch} runner on this {host_arch()} host needs a cross toolchain and the "
                          f"{arch} wheels: pass toolchain_file, executorch_root and litert_lib (see docs/native.md)")
    for tool in ("cmake", "readelf"):
        if shutil.which(tool) is None:
            raise BundleError(f"{tool} not found; install it (Debian: apt-get install cmake g++ binutils)")
    sources = runtime_sources(executorch_root, litert_lib)
    if not sources["executorch_root"] and not sources["litert_lib"]:
        raise BundleError("neither executorch nor ai-edge-litert is installed, so the native runner would run "
                          "nothing; pip install executorch==1.5.1 ai-edge-litert")
    extra = [*cmake_args] + ([f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file}"] if toolchain_file else [])
    key = _bundle_key(arch, sources, extra)
    root = runners_cache() / arch / key
    bundle = root / BUNDLE_NAME
    if (bundle / "manifest.json").is_file() and not force:
        say(f"reusing {bundle}")
        return bundle
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root.parent))
    try:
        build, stage = work / "build", work / BUNDLE_NAME
        log_file = work / "build.log"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DCOMPLEAK_RUNNER_VERSION={_runner_version()}",
                     f"-DCOMPLEAK_LITERT_VERSION={sources['litert'] or 'unknown'}",
                     f"-DCOMPLEAK_WITH_EXECUTORCH={'ON' if sources['executorch_root'] else 'OFF'}", *extra]
        if sources["executorch_root"]:
            configure += [f"-DEXECUTORCH_ROOT={sources['executorch_root']}",
                          f"-DCOMPLEAK_EXECUTORCH_VERSION={sources['executorch']}"]
        say(f"configuring ({arch}; executorch {sources['executorch']}, litert {sources['litert']})")
        _run(configure, log_file)
        say(f"compiling with {jobs} job(s)")
        _run(["cmake", "--build", str(build), "--parallel", str(max(1, jobs))], log_file)
        (stage / "bin").mkdir(parents=True)
        (stage / "lib").mkdir()
        shutil.copy2(build / "compleak-runner", stage / BINARY)
        formats = []
        if sources["litert_lib"]:
            shutil.copy2(sources["litert_lib"], stage / "lib" / "libLiteRt.so")
            formats.append("tflite")
        if sources["executorch_root"]:
            plugin = build / "libcompleak_executorch.so"
            shutil.copy2(plugin, stage / "lib" / plugin.name)
            et_lib = Path(sources["executorch_root"]) / "lib"
            todo, seen = list(_needed(plugin)), set()
            while todo:  # the wheel's libraries the plugin needs, transitively (system libraries stay out)
                name = todo.pop()
                if name in seen or not name.startswith(_ET_LIB_PREFIX) or not (et_lib / name).is_file():
                    continue
                seen.add(name)
                shutil.copy2(et_lib / name, stage / "lib" / name)
                todo += _needed(et_lib / name)
            formats.append("pte")
        files = {str(p.relative_to(stage)): sha256_file(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        manifest = {
            "name": BUNDLE_NAME, "arch": arch, "machine": MACHINE_OF_ARCH[arch], "protocol": 1,
            "runner_version": _runner_version(), "formats": formats,
            "runtimes": {"executorch": sources["executorch"], "litert": sources["litert"]},
            "binary": BINARY, "files": files, "key": key, "sources_sha256": _sources_digest(),
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        tarball = work / f"{BUNDLE_NAME}-linux-{arch}.tar.gz"
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(stage, arcname=BUNDLE_NAME)
        shutil.rmtree(build)
        if root.exists():
            shutil.rmtree(root)
        work.rename(root)  # atomic: a bundle is either complete or absent
        current = root.parent / "current.json"  # find_bundle's answer for a cross-built architecture
        tmp_current = current.with_suffix(".json.part")
        tmp_current.write_text(json.dumps({"key": key}) + "\n")
        os.replace(tmp_current, current)
        say(f"bundle: {bundle} ({sum((bundle / f).stat().st_size for f in files) >> 20} MiB)")
        for old in prune_bundles(arch, keep=KEEP_BUNDLES):
            say(f"removed an older bundle: {old}")
        return bundle
    finally:
        if work.exists():
            keep = work / "build.log"
            if keep.exists():
                shutil.copy2(keep, root.parent / f"build-{key}.log")
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------- host side


def push_bundle(device: Device, bundle: Path, workspace: str) -> str:
    """Copy the bundle's files into ``<workspace>/runner/`` on ``device``; return the remote binary's path.

    Only the files the manifest lists are sent, each to ``runner/bin`` or ``runner/lib`` (names checked by
    :func:`read_bundle_manifest`), so nothing lands outside the workspace.
    """
    manifest = read_bundle_manifest(bundle)
    remote = f"{workspace.rstrip('/')}/runner"
    device.run(["mkdir", "-p", "--", f"{remote}/bin", f"{remote}/lib"], timeout=60).check(
        device.id, "creating the runner folder in the workspace")
    for rel in manifest["files"]:
        local = Path(bundle) / rel
        if not local.is_file():
            raise BundleError(f"{bundle}: {rel} is missing; rebuild the bundle with `compleak runners build`")
        device.put(local, f"{remote}/{rel}")
    binary = f"{remote}/{BINARY}"
    device.run(["chmod", "755", "--", binary], timeout=60).check(device.id, "making the runner executable")
    return binary


class NativeRunnerServer(RunnerServer):
    """``bin/compleak-runner --serve`` on ``device``: the bundle is pushed into the job workspace at :meth:`start`.

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
            binary = push_bundle(self.device, self.bundle, self.workspace)
            self.upload_seconds = time.perf_counter() - t0
            if "runner" in getattr(self, "bytes_sent", {}):  # the bundle stands where the Python runner's source does
                self.bytes_sent["runner"] += sum((self.bundle / rel).stat().st_size for rel in self.manifest["files"])
            self._proc = self.device.spawn([binary, "--serve"], label=BUNDLE_NAME)
        except DeviceError as exc:  # reported when the runner is first needed, as the Python runner's start
            self._start_error = exc if isinstance(exc, BundleError) else DeviceError(
                f"{self.device.id}: cannot start the native runner: {exc}")
        return self

    def ready(self) -> DeviceProcess:
        if self._start_error is not None:
            raise self._start_error
        proc = super().ready()
        self.require_runner("native")
        return proc


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


def bundle_for(device_machine: str | None, bundle: Path | None = None) -> Path:
    """The bundle to use on a device whose ``uname -m`` is ``device_machine``: ``bundle`` when given (checked),
    else the built one for that architecture; raises one line naming the build command when there is none."""
    if bundle is not None:
        read_bundle_manifest(Path(bundle))
        return Path(bundle)
    arch = ARCH_OF_MACHINE.get((device_machine or "").lower())
    if arch is None:
        raise BundleError(f"no native runner for a {device_machine or 'unknown'} device; "
                          f"bundles exist for {', '.join(MACHINE_OF_ARCH.values())}")
    found = find_bundle(arch)
    if found is None:
        raise BundleError(f"no native runner bundle for {arch} yet; build it with `compleak runners build --arch "
                          f"{arch}`")
    return found
