"""The native runner on an emulated arm64 board with no Python at all (issue 14): up -> probe -> collect -> compare.

Real parts only: Podman starts ``device-linux-native`` (Debian bookworm arm64 under qemu-user through binfmt, sshd,
python3 purged), the runner bundle is cross-compiled with Debian's ``g++-aarch64-linux-gnu`` against the aarch64
wheels of ExecuTorch and ai-edge-litert (``compleak runners build --arch arm64``; cached after the first build),
``collect`` chooses the native runner by itself (the board has no Python) and ``compare`` measures the board's
outputs against the host's.

Expectations (docs/native.md): fp32 ``.tflite`` / ``.pte`` within 1e-4 (absolute, logits) of the host with no argmax
flip (measured: ~4e-6; arm64 NEON vs x86 AVX kernels round differently, so not bit-identical); quantized artifacts
are reported as measured divergence (measured: bit-identical). The figures are printed and written to
``$COMPLEAK_TEST_REPORT_DIR/native_arm64_vs_host.json`` (default: the test's temporary directory).

Skipped only when Podman or qemu-aarch64 emulation is unavailable on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.toolchain.edge import edge_down, edge_up
from harness.toolchain.rootfs import build_base_image, ensure_binfmt

ROOT = Path(__file__).resolve().parent.parent
NAME = "edge-arm64-native"
#: a few artifacts of the tiny run: fp32 and quantized, both native formats
FP32 = ("tf-target-original.tflite", "torch-target-original.pte")
QUANTIZED = ("tf-target-int8.tflite", "tf-target-dynamic-int8.tflite", "torch-target-int8.pte")
FP32_TOLERANCE = 1e-4

pytestmark = [pytest.mark.slow, pytest.mark.containers, pytest.mark.timeout(1800)]


def _emulation_unavailable() -> str | None:
    """Why this machine cannot run an arm64 board (None when it can)."""
    if shutil.which("podman") is None:
        return "needs podman (scripts/setup.sh --test)"
    try:
        ensure_binfmt("arm64")
    except HarnessError as exc:
        return f"cannot emulate arm64 here: {exc}"
    return None


@pytest.fixture(scope="module")
def arm64_bundle() -> Path:
    """The arm64 native runner bundle, cross-built (or reused) in the user's cache."""
    from devices.native.bundle import build_bundle
    from harness.toolchain.cross import cross_build_args

    return build_bundle("arm64", **cross_build_args("arm64"))


@pytest.fixture(scope="module")
def board(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``edge-arm64-native`` up (keys and registry in a private cache), its URI; removed afterwards."""
    why = _emulation_unavailable()
    if why:
        pytest.skip(why)
    arm64_bundle = request.getfixturevalue("arm64_bundle")  # built only where a board can run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPLEAK_CACHE_DIR", str(tmp_path_factory.mktemp("compleak-cache")))
        mp.setenv("COMPLEAK_NATIVE_BUNDLE", str(arm64_bundle))  # the cross-built bundle, not the host's
        build_base_image("arm64", engine="podman")  # cached: imports the cached rootfs at most
        edge_down(NAME, engine="podman")
        uri = edge_up(NAME, engine="podman")
        try:
            yield uri
        finally:
            edge_down(NAME, engine="podman")


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny run (its outputs are this module's own)."""
    dst = tmp_path_factory.mktemp("native-arm64") / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("outputs", "attacks", "compare", "report*"))
    return dst


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=ROOT, timeout=timeout)


def test_board_has_no_python_and_probe_names_native(board: str) -> None:
    from devices.uri import connect

    with connect(board) as dev:
        res = dev.run(["sh", "-c", "command -v python3 || command -v python || echo none"], timeout=60)
    assert res.text.strip() == "none"
    probe = _cli("devices", "probe", board, "--json")
    assert probe.returncode == 0, probe.stderr
    props = json.loads(probe.stdout)
    assert props["arch"] == "aarch64" and props["python"] is None and props["libc"] == "gnu"
    assert props["runners"]["python"].startswith("unavailable: no Python"), props["runners"]
    assert props["runners"]["native"].startswith("ready: arm64 bundle"), props["runners"]
    assert "executorch 1.5.1" in props["runners"]["native"] and "litert 2.3.0" in props["runners"]["native"]


def test_collect_on_board_and_compare_with_host(board: str, run: Path, tmp_path: Path) -> None:
    from harness.collect.stage import collect_run
    from harness.compare import compare_device
    from rundir import RunDir

    ids = [*FP32, *QUANTIZED]
    res = _cli("collect", str(run), "--device", board, "--artifacts", ",".join(ids), timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    collect_run(run, "local", artifacts=ids, batch_size=256, console=None)
    rd = RunDir(run)
    for aid in ids:  # the board's outputs came from the native runner, on aarch64, through the runtime named
        prov = json.loads(rd.output_provenance(board, aid).read_text())
        runtime = prov["runtime"]["name"] if isinstance(prov["runtime"], dict) else prov["runtime"]
        assert prov["runner"] == "native", prov
        assert runtime == ("litert" if aid.endswith(".tflite") else "executorch"), prov
        assert prov["device"]["arch"] == "aarch64"

    from rich.console import Console

    out = compare_device(run, board, console=Console(quiet=True))
    div = {d["artifact"]: d for d in json.loads(out.read_text())["artifacts"]}
    assert set(div) == set(ids)
    for aid in ids:
        assert div[aid]["n"] == 600 and np.isfinite(div[aid]["max_abs_diff"])
    for aid in FP32:  # same float graph, other ISA: rounding only
        assert div[aid]["max_abs_diff"] <= FP32_TOLERANCE, div[aid]
        assert div[aid]["argmax_flips"] == 0, div[aid]
    report = {aid: {k: div[aid][k] for k in ("format", "variant", "max_abs_diff", "mean_abs_diff", "argmax_flips",
                                             "kl_max", "frac_bit_identical")} for aid in ids}
    out_dir = Path(os.environ.get("COMPLEAK_TEST_REPORT_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "native_arm64_vs_host.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\nnative runner on the arm64 no-Python board vs host x86-64:\n" + json.dumps(report, indent=2))


def test_forced_python_runner_says_why_in_one_line(board: str, run: Path) -> None:
    from devices.errors import DeviceError
    from devices.runners.choose import choose_runner
    from devices.uri import connect
    from rundir import RunDir

    rec = next(a for a in RunDir(run).load_manifest().artifacts if a.id == FP32[0])
    with connect(board) as dev:
        props = dev.properties()
        assert type(choose_runner(dev, rec, props=props)).__name__ == "NativeRunner"
        with pytest.raises(DeviceError) as exc:
            choose_runner(dev, rec, props=props, runner="python")
    msg = str(exc.value)
    assert "\n" not in msg and "no usable Python" in msg, msg


def test_litert_under_qemu_with_host_cpuinfo_is_one_line_or_right(tiny_run: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The arm64 bundle run by this host's qemu-user directly (binfmt, the cross toolchain's sysroot as the loader
    prefix): it sees the host's x86 /proc/cpuinfo, where LiteRT's XNNPACK accelerator crashes and ExecuTorch does
    not. The documented behaviour (docs/native.md): the crash comes back as one line naming it, caught in the
    runner's check process, while ExecuTorch in the same bundle answers; should qemu or LiteRT stop tripping over the
    x86 cpuinfo, the outputs must equal the host's. The board started by ``devices up`` mounts an arm64 cpuinfo and
    runs LiteRT (test above)."""
    from devices.errors import DeviceError
    from devices.local import LocalDevice
    from devices.ondevice.compleak_runner import load_model
    from devices.runners.native_oneshot import NativeOneShotRunner
    from rundir import RunDir

    why = _emulation_unavailable()
    sysroot = Path("/usr/aarch64-linux-gnu")
    if why:
        pytest.skip(why)
    if not (sysroot / "lib" / "ld-linux-aarch64.so.1").exists():
        pytest.skip("needs the aarch64 sysroot of g++-aarch64-linux-gnu (/usr/aarch64-linux-gnu)")
    from devices.native.bundle import build_bundle
    from harness.toolchain.cross import cross_build_args

    bundle = build_bundle("arm64", **cross_build_args("arm64"))
    monkeypatch.setenv("QEMU_LD_PREFIX", str(sysroot))
    monkeypatch.setenv("QEMU_CPU", "cortex-a72")
    rd = RunDir(tiny_run)
    recs = {a.id: a for a in rd.load_manifest().artifacts}
    x = np.random.default_rng(3).random((16, 8, 8, 1), dtype=np.float32)
    dev = LocalDevice()
    pte = recs[FP32[1]]
    values, prov = NativeOneShotRunner(bundle, "pte", batch_size=8).run(dev, rd.artifact_path(pte), pte, x)
    host = load_model(str(rd.artifact_path(pte)), runtime="executorch").predict(x, batch_size=8)
    assert prov["device_machine"] == "aarch64" and np.abs(values - host).max() <= FP32_TOLERANCE
    tfl = recs[FP32[0]]
    try:
        values, _ = NativeOneShotRunner(bundle, "tflite", batch_size=8).run(dev, rd.artifact_path(tfl), tfl, x)
    except DeviceError as exc:
        msg = str(exc)
        assert "\n" not in msg and "Traceback" not in msg, msg
        assert "crashed" in msg and "segmentation fault" in msg, msg
        values, _ = NativeOneShotRunner(bundle, "pte", batch_size=8).run(dev, rd.artifact_path(pte), pte, x)
        assert np.abs(values - host).max() <= FP32_TOLERANCE  # the same bundle still answers ExecuTorch
        return
    host = load_model(str(rd.artifact_path(tfl)), runtime="ai_edge_litert").predict(x, batch_size=8)
    assert np.abs(values - host).max() <= FP32_TOLERANCE  # qemu or LiteRT no longer trips over the x86 cpuinfo
