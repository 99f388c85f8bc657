"""The native runner: ``compleak-runner``, a C++ binary that answers the runner protocol without Python on the device.

Its sources ship in this package (this folder, ``devices/native/``: CMake project, ``src/*.cpp``);
:func:`build_bundle` compiles them against the runtimes of the installed wheels (ExecuTorch's C++ runtime from
``executorch``, LiteRT's C API ``libLiteRt.so`` from ``ai-edge-litert``) into a self-contained bundle::

    <cache>/runners/<arch>/<key>/compleak-runner/
        bin/compleak-runner          RUNPATH $ORIGIN/../lib
        lib/libcompleak_executorch.so, libexecutorch*.so, libLiteRt.so
        lib/ld-linux-*.so.*, libc.so.6, libm.so.6, libstdc++.so.6, libgcc_s.so.1, ...   the glibc loader and the C/C++
                                     runtime every ELF file above needs (from the compiler's sysroot), so the
                                     runner starts through ``lib/ld-linux-*`` on a device without (a new enough) glibc
        manifest.json                arch, versions, formats, sha256 of every file (checked by the host before it
                                     pushes the bundle and by the binary itself when it starts)
    <cache>/runners/<arch>/<key>/compleak-runner-linux-<arch>.tar.gz      byte-identical for the same inputs

``<cache>`` is :func:`devices.known_devices.cache_dir`; ``<key>`` hashes the sources, the runtime versions and the
build options, so a changed source or wheel gives a fresh bundle and :func:`find_bundle` finds the current one
without building.

The runner runs on a device through :mod:`devices.runners.native` (the host side).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from devices.errors import DeviceError
from rundir import sha256_file

#: the CMake project of the binary (package data)
SOURCE_DIR = Path(__file__).parent


#: what the C++ build reads (the bundle key's digest covers these; this Python module is not one of them)
SOURCE_PARTS = ("CMakeLists.txt", "cmake", "src")
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


#: how the bundle is laid out (part of the bundle key: this module is not among the hashed sources); 2: the loader
#: and C library travel in lib/
BUNDLE_LAYOUT = 2


#: the Debian packages that hold each architecture's C/C++ runtime (for the error when one is missing)
_RUNTIME_PACKAGES = {"amd64": "libc6, libstdc++6, libgcc-s1", "arm64": "g++-aarch64-linux-gnu (libc6-arm64-cross, "
                     "libstdc++6-arm64-cross, libgcc-s1-arm64-cross)"}


class BundleError(DeviceError):
    """The native runner bundle cannot be built or is unusable; one line naming the fix."""


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
    for path in sorted(p for p in SOURCE_DIR.rglob("*") if p.is_file() and p.relative_to(SOURCE_DIR).parts[0] in
                       SOURCE_PARTS and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(SOURCE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _runner_version() -> str:
    return _dist_version("compleak-harness") or "0.1.0"


def _bundle_key(arch: str, sources: dict[str, Any], cmake_args: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (arch, BUNDLE_LAYOUT, _sources_digest(), _runner_version(), str(sources["executorch_root"]),
                 sources["executorch"], str(sources["litert_lib"]), sources["litert"], *cmake_args):
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
    ) or (manifest.get("loader") == "bundled" and not (
        isinstance(manifest.get("loader_file"), str) and manifest["loader_file"].startswith("lib/")
        and manifest["loader_file"] in files)):
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


def launch_argv(root: str, manifest: dict[str, Any]) -> list[str]:
    """The command that starts the runner of the bundle at ``root`` on a device (arguments such as ``--serve``
    follow): through the bundle's own loader when it has one (``"loader": "bundled"``), so neither the device's
    C library nor ``/proc/self/exe`` matters, else the binary itself. ``--root`` / ``--loader`` tell the runner
    where its files are and how to start itself again (its load checks)."""
    root = root.rstrip("/") or "/"
    binary = f"{root}/{BINARY}"
    if manifest.get("loader") != "bundled":
        return [binary]
    loader = f"{root}/{manifest['loader_file']}"
    return [loader, "--inhibit-cache", "--library-path", f"{root}/lib", binary, "--root", root, "--loader", loader]


def _needed(lib: Path) -> list[str]:
    """The DT_NEEDED names of an ELF file (``readelf -d``)."""
    res = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True)
    return [ln.split("[", 1)[1].rstrip("]").strip() for ln in res.stdout.splitlines()
            if "(NEEDED)" in ln and "[" in ln]


@dataclass(frozen=True)
class _BuildPlan:
    """One bundle build: the architecture, the runtimes it builds against (:func:`runtime_sources`), the extra CMake
    arguments, the bundle key they hash to, and the scratch folder ``work`` (``build/``, the staged bundle,
    ``build.log``; renamed to ``<cache>/runners/<arch>/<key>`` when complete)."""

    arch: str
    sources: dict[str, Any]
    cmake_extra: list[str]
    key: str
    work: Path

    @property
    def build(self) -> Path:
        return self.work / "build"

    @property
    def stage(self) -> Path:
        return self.work / BUNDLE_NAME

    @property
    def log_file(self) -> Path:
        return self.work / "build.log"


def _check_build_host(arch: str | None, toolchain_file: Path | None) -> str:
    """The architecture to build (default: this host's), checked buildable here: known, cross-built only with a
    toolchain file, ``cmake`` and ``readelf`` present."""
    arch = arch or host_arch()
    if arch not in MACHINE_OF_ARCH:
        raise BundleError(f"unknown architecture {arch!r}; use one of {', '.join(MACHINE_OF_ARCH)}")
    if arch != host_arch() and not toolchain_file:
        raise BundleError(f"building the {arch} runner on this {host_arch()} host needs a cross toolchain and the "
                          f"{arch} wheels: pass toolchain_file, executorch_root and litert_lib (see docs/native.md)")
    for tool in ("cmake", "readelf"):
        if shutil.which(tool) is None:
            raise BundleError(f"{tool} not found; install it (Debian: apt-get install cmake g++ binutils)")
    return arch


def _configure_and_build(plan: _BuildPlan, jobs: int, say: Callable[[str], None]) -> None:
    """Configure the CMake project into ``plan.build`` and compile it (every command's output in ``build.log``)."""
    sources = plan.sources
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(plan.build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCOMPLEAK_RUNNER_VERSION={_runner_version()}",
                 f"-DCOMPLEAK_LITERT_VERSION={sources['litert'] or 'unknown'}",
                 f"-DCOMPLEAK_WITH_EXECUTORCH={'ON' if sources['executorch_root'] else 'OFF'}", *plan.cmake_extra]
    if sources["executorch_root"]:
        configure += [f"-DEXECUTORCH_ROOT={sources['executorch_root']}",
                      f"-DCOMPLEAK_EXECUTORCH_VERSION={sources['executorch']}"]
    say(f"configuring ({plan.arch}; executorch {sources['executorch']}, litert {sources['litert']})")
    _run(configure, plan.log_file)
    say(f"compiling with {jobs} job(s)")
    _run(["cmake", "--build", str(plan.build), "--parallel", str(max(1, jobs))], plan.log_file)


def _collect_libraries(plan: _BuildPlan) -> list[str]:
    """Stage the binary and the libraries it loads into ``plan.stage`` (``bin/``, ``lib/``): libLiteRt.so, the
    ExecuTorch plugin and the wheel's libraries the plugin needs, transitively; returns the formats bundled."""
    build, stage, sources = plan.build, plan.stage, plan.sources
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
    return formats


def _interpreter(binary: Path) -> str:
    """The ELF program interpreter (``PT_INTERP``) of ``binary``, e.g. ``/lib64/ld-linux-x86-64.so.2``."""
    res = subprocess.run(["readelf", "-l", str(binary)], capture_output=True, text=True)
    found = re.search(r"Requesting program interpreter: ([^\]]+)\]", res.stdout)
    if not found:
        raise BundleError(f"{binary}: no program interpreter (not a dynamically linked executable); cannot bundle "
                          f"its loader")
    return found.group(1).strip()


def _compiler(plan: _BuildPlan) -> str:
    """The C++ compiler the build used (CMake's ``CMakeFiles/<version>/CMakeCXXCompiler.cmake``: the toolchain
    file's compiler for a cross build, which CMakeCache.txt does not record)."""
    for found in sorted((plan.build / "CMakeFiles").glob("*/CMakeCXXCompiler.cmake")):
        named = re.search(r'set\(CMAKE_CXX_COMPILER "([^"]+)"\)', found.read_text(errors="replace"))
        if named:
            return named.group(1)
    raise BundleError(f"{plan.build}: CMake recorded no C++ compiler; rebuild with --force")


def _system_library(compiler: str, name: str, arch: str) -> Path:
    """Where the compiler's sysroot holds the shared library ``name`` (``<compiler> -print-file-name=NAME``: the
    host's /lib/<triplet> for a native build, /usr/aarch64-linux-gnu/lib for Debian's cross compiler)."""
    res = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True)
    path = Path(res.stdout.strip())
    if res.returncode != 0 or not path.is_absolute() or not path.is_file():
        raise BundleError(f"{name}, which the {arch} runner needs, is not in {Path(compiler).name}'s sysroot; install "
                          f"{_RUNTIME_PACKAGES.get(arch, 'the C library of the target')} (Debian)")
    return path.resolve()


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x7fELF"


def _bundle_system_libraries(plan: _BuildPlan) -> dict[str, str]:
    """Copy the dynamic loader and every shared library the staged ELF files need, transitively, that the bundle
    does not hold yet (libc, libm, libstdc++, libgcc_s, libdl, ...) from the compiler's sysroot into ``lib/``;
    returns the manifest fields ``loader``, ``loader_file``, ``libc`` and ``glibc`` (the bundled glibc's version)."""
    lib = plan.stage / "lib"
    compiler = _compiler(plan)
    loader_name = Path(_interpreter(plan.stage / BINARY)).name
    todo = [loader_name]
    for path in sorted([*(plan.stage / "bin").iterdir(), *lib.iterdir()]):
        if path.is_file() and _is_elf(path):
            todo += _needed(path)
    while todo:
        name = todo.pop()
        if (lib / name).exists():
            continue
        if "/" in name or name in ("", ".", ".."):
            raise BundleError(f"an ELF file of the bundle needs {name!r}, not a library name; rebuild the bundle")
        shutil.copyfile(_system_library(compiler, name, plan.arch), lib / name)
        os.chmod(lib / name, 0o755)
        todo += _needed(lib / name)
    glibc = re.search(rb"release version (\d+\.\d+)", (lib / "libc.so.6").read_bytes()) if (
        lib / "libc.so.6").is_file() else None
    if glibc is None:
        raise BundleError(f"{lib / 'libc.so.6'}: not bundled or not a glibc (no release version); the runner is "
                          f"built for glibc: install {_RUNTIME_PACKAGES.get(plan.arch, 'its C library')}")
    return {"loader": "bundled", "loader_file": f"lib/{loader_name}", "libc": "gnu", "glibc": glibc.group(1).decode()}


def _write_manifest(plan: _BuildPlan, formats: list[str], runtime: dict[str, str]) -> dict[str, str]:
    """Write the staged bundle's ``manifest.json`` (the sha256 of every staged file among it, the bundled C runtime's
    fields ``runtime`` from :func:`_bundle_system_libraries`); returns those files. Nothing in it depends on when or
    in which scratch folder it was built, so the same inputs give the same bytes."""
    stage, sources = plan.stage, plan.sources
    files = {str(p.relative_to(stage)): sha256_file(p) for p in sorted(stage.rglob("*")) if p.is_file()}
    manifest = {
        "name": BUNDLE_NAME, "arch": plan.arch, "machine": MACHINE_OF_ARCH[plan.arch], "protocol": 1,
        "runner_version": _runner_version(), "formats": formats,
        "runtimes": {"executorch": sources["executorch"], "litert": sources["litert"]},
        "binary": BINARY, "files": files, "key": plan.key, "sources_sha256": _sources_digest(), **runtime,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return files


def _write_tarball(plan: _BuildPlan) -> None:
    """``compleak-runner-linux-<arch>.tar.gz`` beside the staged bundle: the same folder as one file, reproducible
    (entries sorted, owner root, mode 755/644, mtime 0, and a gzip header without name or time)."""
    import gzip

    def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    paths = [plan.stage, *sorted(plan.stage.rglob("*"))]
    with open(plan.work / f"{BUNDLE_NAME}-linux-{plan.arch}.tar.gz", "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in paths:
            arcname = str(Path(BUNDLE_NAME) / path.relative_to(plan.stage)) if path != plan.stage else BUNDLE_NAME
            tar.add(path, arcname=arcname, recursive=False, filter=normalized)


def _install(plan: _BuildPlan, root: Path) -> None:
    """Move the finished build to ``root`` (atomic: a bundle is either complete or absent) and name it in
    ``current.json`` (find_bundle's answer for a cross-built architecture)."""
    shutil.rmtree(plan.build)
    if root.exists():
        shutil.rmtree(root)
    plan.work.rename(root)
    current = root.parent / "current.json"
    tmp_current = current.with_suffix(".json.part")
    tmp_current.write_text(json.dumps({"key": plan.key}) + "\n")
    os.replace(tmp_current, current)


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

    Steps: configure and compile (:func:`_configure_and_build`), stage the binary and its libraries
    (:func:`_collect_libraries`) with the loader and C/C++ runtime they need (:func:`_bundle_system_libraries`),
    write the manifest and the tarball, move the bundle into place, prune old ones.
    """
    say = log or (lambda _msg: None)
    arch = _check_build_host(arch, toolchain_file)
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
    plan = _BuildPlan(arch, sources, extra, key, work)
    try:
        _configure_and_build(plan, jobs, say)
        formats = _collect_libraries(plan)
        files = _write_manifest(plan, formats, _bundle_system_libraries(plan))
        _write_tarball(plan)
        _install(plan, root)
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
