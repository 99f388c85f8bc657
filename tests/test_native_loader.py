"""The native runner's own loader and C library (issue 21): a bundle that needs nothing from the device's libc.

Real parts only: the bundles are built from devices/native/ (amd64 with the host's compiler, arm64 with Debian's
``g++-aarch64-linux-gnu`` against the aarch64 wheels), and run in a root file system made of nothing but the bundle
(no ``/lib``, ``/lib64``, ``/usr``, ``/etc``, no mounted ``/proc``: no glibc at any standard path), entered with ``chroot`` and
started through the bundle's ``lib/ld-linux-*`` exactly as the host starts it on a device
(:func:`devices.native.bundle.launch_argv`). ``/proc/cpuinfo`` and the CPU lists under ``/sys/devices/system/cpu``
are plain files in the root (XNNPACK's cpuinfo reads them; without them XNNPACK does not initialize): the host's for
amd64, an arm64 two-core board's for arm64, which runs through qemu-user (binfmt; LiteRT's aarch64 library crashes on
the host's x86 cpuinfo, see docs/native.md). Outputs are compared with the host's: the same bundle run directly on amd64 (bit-identical),
the amd64 bundle for arm64 (fp32 within 1e-5, quantized identical).

Skips (failures on CI, see conftest) name what is missing: root (chroot), the cross compiler, qemu-aarch64.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from devices.errors import DeviceError
from devices.native.bundle import BINARY, _interpreter, _needed, build_bundle, launch_argv, read_bundle_manifest
from rundir import RunDir

pytestmark = [pytest.mark.timeout(1800),
              pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                 reason="needs cmake and a C++ compiler (scripts/setup.sh --test installs them)")]

#: artifacts of the tiny run: fp32 and quantized, both native formats
FP32 = ("tf-target-original.tflite", "torch-target-original.pte")
QUANTIZED = ("tf-target-int8.tflite", "torch-target-int8.pte")
#: fp32 logits, arm64 (NEON) vs x86-64 (AVX): rounding only (measured ~4e-6)
FP32_TOLERANCE = 1e-5
#: where the bundle lies inside the root file system (as on a phone)
REMOTE = "/data/local/tmp/bundle"
#: the stderr line of a runner whose load check could not start as a fresh process (main.cpp, check_contained)
NO_REEXEC = "cannot start the load check as a fresh process"


@pytest.fixture(scope="module")
def bundles() -> dict[str, Path]:
    """The amd64 bundle (this host's) and, where the cross compiler is installed, the arm64 one."""
    out = {"amd64": build_bundle("amd64", jobs=2)}
    if shutil.which("aarch64-linux-gnu-g++") is not None:
        from harness.toolchain.cross import cross_build_args

        out["arm64"] = build_bundle("arm64", jobs=2, **cross_build_args("arm64"))
    return out


def _bundle(bundles: dict[str, Path], arch: str) -> Path:
    if arch not in bundles:
        pytest.skip(f"the {arch} bundle needs the cross compiler: apt-get install g++-aarch64-linux-gnu")
    return bundles[arch]


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return len(body).to_bytes(4, "big") + body


def _replies(data: bytes) -> list[tuple[dict, bytes]]:
    """The framed messages in ``data``: (header, payload) pairs."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        header = json.loads(data[pos + 4:pos + 4 + n])
        size = int(header.get("bytes") or 0)
        out.append((header, data[pos + 4 + n:pos + 4 + n + size]))
        pos += 4 + n + size
    assert pos == len(data), "trailing bytes after the last message"
    return out


def _request(model: str, x: np.ndarray) -> bytes:
    """load ``model``, infer ``x`` (float32 NHWC) in batches of 8, exit."""
    return (_frame({"op": "load", "model": model, "threads": 1}) +
            _frame({"op": "infer", "shape": list(x.shape), "bytes": x.nbytes, "batch_size": 8}) + x.tobytes() +
            _frame({"op": "exit"}))


def _serve(argv: list[str], request: bytes, env: dict[str, str] | None = None) -> tuple[dict, np.ndarray, str]:
    """Run one runner command on ``request``; (hello, outputs [M, K], stderr), asserting every reply is ok."""
    res = subprocess.run([*argv, "--serve"], input=request, capture_output=True, timeout=600,
                         env=env or {"PATH": "/usr/bin:/bin"})
    err = res.stderr.decode(errors="replace")
    replies = _replies(res.stdout)
    assert res.returncode == 0 and len(replies) == 3, (res.returncode, replies, err[-2000:])
    (hello, _), (loaded, _), (infer, payload) = replies
    assert hello["ok"] and loaded["ok"] and infer["ok"], (replies, err[-2000:])
    return hello, np.frombuffer(payload, dtype="<f4").reshape(infer["shape"]), err


def _rootfs(tmp: Path, bundle: Path, arch: str) -> Path:
    """A root file system of only the bundle (at ``REMOTE``), a workspace, and as plain files ``/proc/cpuinfo`` (the
    host's; an arm64 one for arm64) and ``/sys/devices/system/cpu/{possible,present,online}``, which XNNPACK's
    cpuinfo reads. Checked: no glibc loader or libc at any standard path."""
    root = tmp / f"root-{arch}"
    shutil.copytree(bundle, root / REMOTE.lstrip("/"), symlinks=True)
    (root / "data/local/tmp/ws").mkdir()
    (root / "proc").mkdir()  # the runtimes' cpuinfo reads it (XNNPACK does not start without it)
    if arch == "arm64":
        from harness.toolchain.edge import EDGE_CPUINFO

        (root / "proc" / "cpuinfo").write_text(EDGE_CPUINFO["arm64"])
    else:
        (root / "proc" / "cpuinfo").write_bytes(Path("/proc/cpuinfo").read_bytes())
    cpus = root / "sys/devices/system/cpu"  # cpuinfo's processor lists (on arm64 it needs them)
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        host = Path("/sys/devices/system/cpu") / name
        (cpus / name).write_text("0-1\n" if arch == "arm64" else host.read_text())  # arm64: EDGE_CPUINFO's 2 cores
    assert sorted(p.name for p in root.iterdir()) == ["data", "proc", "sys"]
    assert not list(root.glob("*/ld-linux*")) and not list(root.glob("*/*/ld-linux*"))
    return root


def _chroot_unavailable(arch: str) -> str | None:
    """Why this machine cannot run ``arch`` in a chroot (None when it can)."""
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        return "needs root and chroot (coreutils) to enter a root file system without glibc"
    if arch == "arm64" and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_file():
        return "needs qemu-aarch64 registered with binfmt_misc (F flag): apt-get install qemu-user-static"
    return None


def _chroot() -> str:
    """The absolute path of ``chroot`` (the runner's environment has a minimal PATH)."""
    path = shutil.which("chroot")
    assert path, "checked by _chroot_unavailable"
    return path


def _queries(tiny_run: Path, aid: str, n: int = 40) -> tuple[Path, np.ndarray]:
    rec = next(a for a in RunDir(tiny_run).load_manifest().artifacts if a.id == aid)
    x = np.random.default_rng(5).random((n, *rec.inputs[0].shape[1:]), dtype=np.float32)
    return RunDir(tiny_run).artifact_path(rec), x


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_bundle_carries_its_loader_and_c_library(bundles: dict[str, Path], arch: str) -> None:
    """lib/ holds the loader the binary names (PT_INTERP) and every library any ELF file of the bundle needs
    (libc, libm, libstdc++, libgcc_s, ...); the manifest says ``"loader": "bundled"`` and lists them with sha256."""
    bundle = _bundle(bundles, arch)
    manifest = read_bundle_manifest(bundle)
    assert manifest["arch"] == arch and manifest["loader"] == "bundled" and manifest["libc"] == "gnu"
    assert manifest["loader_file"] == "lib/" + Path(_interpreter(bundle / BINARY)).name
    assert manifest["glibc"].count(".") == 1 and all(p.isdigit() for p in manifest["glibc"].split("."))
    lib = {p.name for p in (bundle / "lib").iterdir()}
    assert {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", Path(manifest["loader_file"]).name} <= lib
    for path in [bundle / BINARY, *sorted((bundle / "lib").iterdir())]:
        missing = set(_needed(path)) - lib
        assert not missing, f"{path.name} needs {missing}, not in lib/"
        assert f"{path.parent.name}/{path.name}" in manifest["files"]
    assert not any((bundle / "lib" / n).is_symlink() for n in lib)  # plain files: nothing points outside


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_runner_runs_without_glibc_in_a_chroot(bundles: dict[str, Path], arch: str, tiny_run: Path,
                                               tmp_path: Path) -> None:
    """In a root file system with nothing but the bundle, the runner started through its own loader serves
    every model (its load checks re-exec through the same loader, no /proc needed) and gives the host's outputs."""
    why = _chroot_unavailable(arch)
    if why:
        pytest.skip(why)
    bundle = _bundle(bundles, arch)
    root = _rootfs(tmp_path, bundle, arch)
    argv = [_chroot(), str(root), *launch_argv(REMOTE, read_bundle_manifest(bundle))]
    env = {"PATH": "/usr/bin:/bin", **({"QEMU_CPU": "cortex-a72"} if arch == "arm64" else {})}
    host_argv = [str(bundles["amd64"] / BINARY)]
    for aid in (*FP32, *QUANTIZED):
        model, x = _queries(tiny_run, aid)
        shutil.copyfile(model, root / "data/local/tmp/ws" / model.name)
        hello, got, err = _serve(argv, _request(f"/data/local/tmp/ws/{model.name}", x), env)
        assert hello["machine"] == ("x86_64" if arch == "amd64" else "aarch64")
        assert NO_REEXEC not in err, err[-2000:]  # the load check started as a fresh process through the loader
        _, host, _ = _serve(host_argv, _request(str(model), x))
        assert got.shape == host.shape == (len(x), 10)
        if arch == "amd64" or aid in QUANTIZED:
            assert np.array_equal(got, host), f"{aid}: max |diff| {np.abs(got - host).max()}"
        else:
            assert np.abs(got - host).max() <= FP32_TOLERANCE, f"{aid}: max |diff| {np.abs(got - host).max()}"
            assert np.array_equal(got.argmax(1), host.argmax(1))


def test_without_its_loader_the_runner_cannot_start_in_the_chroot(bundles: dict[str, Path], tiny_run: Path,
                                                                  tmp_path: Path) -> None:
    """The control: the same root file system refuses the binary started directly (its PT_INTERP is not there),
    and a wrong --loader makes the load check fall back to the forked child, which stderr names."""
    why = _chroot_unavailable("amd64")
    if why:
        pytest.skip(why)
    bundle = bundles["amd64"]
    root = _rootfs(tmp_path, bundle, "amd64")
    direct = subprocess.run([_chroot(), str(root), f"{REMOTE}/{BINARY}", "--version"], capture_output=True,
                            text=True)
    assert direct.returncode == 127 and "No such file or directory" in direct.stderr, direct
    argv = launch_argv(REMOTE, read_bundle_manifest(bundle))
    argv[argv.index("--loader") + 1] = "/nonexistent/ld.so"
    model, x = _queries(tiny_run, FP32[0], n=2)
    shutil.copyfile(model, root / "data/local/tmp/ws/m.tflite")
    _, _, err = _serve([_chroot(), str(root), *argv], _request("/data/local/tmp/ws/m.tflite", x))
    assert NO_REEXEC in err and "/nonexistent/ld.so" in err, err[-2000:]


def test_a_bionic_or_musl_device_takes_the_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    """The C library of the device no longer matters to a bundle with its own loader; one without (an older build)
    is refused on bionic in one line naming the rebuild."""
    from devices.local import LocalDevice
    from devices.runners.choose import native_runner_for, usable_runners
    from devices.runners.native import NativeRunner

    bundle = bundles["amd64"]
    dev = LocalDevice()
    props = dev.properties()
    for libc in ("bionic", "musl", None, "gnu"):
        props.libc = libc
        assert isinstance(native_runner_for(dev, props, "tflite", bundle), NativeRunner)
    old = tmp_path / "old-bundle"
    old.mkdir()
    manifest = {k: v for k, v in read_bundle_manifest(bundle).items() if k not in ("loader", "loader_file")}
    (old / "manifest.json").write_text(json.dumps(manifest))
    props.libc = "bionic"
    with pytest.raises(DeviceError, match=r"bionic.*no loader of its own.*runners build --force") as exc:
        native_runner_for(dev, props, "tflite", old)
    assert "\n" not in str(exc.value)
    props.libc = "gnu"
    assert isinstance(native_runner_for(dev, props, "tflite", old), NativeRunner)
    assert launch_argv("/w/runner/", manifest) == ["/w/runner/bin/compleak-runner"]  # started directly, as before
    new = launch_argv("/w/runner/", read_bundle_manifest(bundle))
    assert new[0] == "/w/runner/lib/" + Path(_interpreter(bundle / BINARY)).name and new[4:7] == [
        "/w/runner/bin/compleak-runner", "--root", "/w/runner"]
    props.arch = "x86_64"
    assert not usable_runners(props)["native"].startswith("unavailable"), usable_runners(props)


@pytest.mark.parametrize("args, status, says", [
    (["--root"], 2, "--root needs the bundle folder"),
    (["--root", ""], 2, "--root needs the bundle folder"),
    (["--loader", "/x/ld.so", "--serve"], 2, "--loader only with --root"),
    (["--root", "/nonexistent", "--probe"], 0, "manifest.json beside bin/ cannot be read"),
    (["--root", "/nonexistent", "--serve"], 3, "the runner bundle is not intact"),
])
def test_bad_location_arguments_are_one_line(bundles: dict[str, Path], args: list[str], status: int,
                                             says: str) -> None:
    """--root / --loader that are missing, empty, out of order or name no bundle: one line, never a crash."""
    res = subprocess.run([str(bundles["amd64"] / BINARY), *args], input=b"", capture_output=True, timeout=60)
    text = (res.stdout + res.stderr).decode(errors="replace")
    assert res.returncode == status and says in text, (res.returncode, text)
    assert res.returncode >= 0 and "Traceback" not in text and len(res.stderr.decode().strip().splitlines()) <= 1


@pytest.mark.slow
def test_same_sources_give_a_byte_identical_tarball(bundles: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A second build from the same sources and wheels, in another cache (another scratch folder, another time),
    gives the same tarball, byte for byte."""
    first = bundles["amd64"]
    monkeypatch.setenv("COMPLEAK_CACHE_DIR", str(tmp_path / "cache"))
    second = build_bundle("amd64", jobs=2, force=True)
    assert second != first
    name = "compleak-runner-linux-amd64.tar.gz"
    for rel in read_bundle_manifest(first)["files"]:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes()
