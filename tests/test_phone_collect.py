"""Collection on the phone-shaped device (issue 21 item 3): `compleak collect RUN --device adb://127.0.0.1:PORT`
with no runner or bundle option, against `compleak devices up phone-x86_64 | phone-arm64` behind the real adb.

The device has no Python and no glibc, so the harness must pick the native runner and start it through the loader
its bundle carries; the bundle is installed once per device under /data/local/tmp/compleak/runners (checked with the
device's sha256sum, pushed again only when a file differs). Outputs are compared with the host's own runtimes
(`compleak collect RUN --device local`): amd64 within 1e-6 (same binary code), arm64 under qemu-user within 1e-5 for
float models, identical for integer-only int8 models, and for dynamic-range int8 models (activations quantized at run
time, where arm64 and x86 kernels may round one step apart) at most 1% of rows off by more than 1e-5, by at most 2e-2
(seen here: 1-2 rows of 600, up to 5e-3) with the same top class in 99% of rows. The bundles come from `compleak runners build` (and
`--arch arm64`, cross-compiled) in the user's cache, built there once; the devices, their adb server and the run
are this module's own. Phone-shaped, not Android (docs/android.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_phone_device import COMPLEAK, Cli, Phone, _missing  # noqa: E402

pytestmark = [pytest.mark.adb, pytest.mark.slow, pytest.mark.timeout(1200)]
ARCH = {"phone-x86_64": "amd64", "phone-arm64": "arm64"}
RUNNERS = "/data/local/tmp/compleak/runners"


def _runners_dir(arch: str) -> Path:
    """``<user cache>/runners`` holding this host's ``arch`` bundle (built by `compleak runners build` if needed)."""
    cp = subprocess.run([str(COMPLEAK), "runners", "build", "--arch", arch], capture_output=True, text=True,
                        timeout=3600, env=dict(os.environ))
    if cp.returncode != 0 and arch == "arm64" and "apt" in cp.stderr and "install" in cp.stderr:
        pytest.skip(f"cannot cross-build the arm64 bundle: {cp.stderr.strip()[:300]}")
    assert cp.returncode == 0, cp.stderr
    bundle = Path(cp.stdout.strip().splitlines()[-1])
    assert (bundle / "manifest.json").is_file(), cp.stdout
    return bundle.parents[2]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    if not COMPLEAK.exists():
        pytest.skip("the project's .venv is not set up (bash scripts/setup.sh)")
    cli = Cli(tmp_path_factory.mktemp("adbhome"), tmp_path_factory.mktemp("cache"))
    yield cli
    if shutil.which("adb"):
        cli.adb("kill-server")


@pytest.fixture(scope="module", params=["phone-x86_64", "phone-arm64"])
def phone(request, cli):
    why = _missing(request.param)
    if why:
        pytest.skip(why)
    link = Path(cli.env["COMPLEAK_CACHE_DIR"]) / "runners"
    runners = _runners_dir(ARCH[request.param])
    if not link.is_symlink():  # `collect` finds the bundle in its cache, as after `compleak runners build`
        link.symlink_to(runners)
    assert link.resolve() == runners.resolve()
    up = cli.run("devices", "up", request.param)
    assert up.returncode == 0, up.stderr
    phone = Phone(request.param, cli, up)
    yield phone
    cli.run("devices", "down", request.param)


def _run_copy(tiny_run: Path, dest: Path) -> Path:
    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns("outputs"))
    return dest


def _artifacts(run: Path, kind: str) -> list[str]:
    """Every .tflite and .pte artifact (the formats the native runner runs); arm64 under qemu: the target's only."""
    arts = json.loads((run / "manifest.json").read_text())["artifacts"]
    ids = [a["id"] for a in arts if a["format"] in ("tflite", "pte")]
    return [i for i in ids if "-target-" in i] if kind == "phone-arm64" else ids


def _integer_only(aid: str) -> bool:
    return "int8" in aid and "dynamic" not in aid


def _runner_stamp(phone: Phone) -> str:
    """inode and mtime of the installed runner binary on the device (changes when it is pushed again)."""
    return phone.sh(f"stat -c '%i %Y' {RUNNERS}/*/bin/compleak-runner").strip()


def _collect(phone: Phone, run: Path, ids: list[str] | None, device: str | None = None) -> str:
    """``compleak collect`` of ``ids`` (None: the whole run, no options); its output."""
    pick = ["--artifacts", ",".join(ids)] if ids is not None else []
    cp = phone.cli.run("collect", str(run), "--device", device or phone.uri, *pick, timeout=1200)
    assert cp.returncode == 0, (cp.stdout[-2000:], cp.stderr)
    return cp.stdout


def _assert_like_host(rd, device: str, ids: list[str], kind: str) -> None:
    for aid in ids:
        got, want = rd.load_outputs(device, aid), rd.load_outputs("local", aid)
        np.testing.assert_array_equal(got.index, want.index)
        assert got.values.shape == want.values.shape and got.values.dtype == want.values.dtype, aid
        if kind == "phone-x86_64":
            np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-6, err_msg=aid)
        elif _integer_only(aid):
            np.testing.assert_array_equal(got.values, want.values, err_msg=aid)
        elif "dynamic" in aid:  # activations quantized at run time: an arm64 rounding may move one step, rarely
            diff = np.abs(got.values - want.values).max(axis=1)
            assert (diff > 1e-5).mean() <= 0.01 and diff.max() <= 2e-2, (aid, int((diff > 1e-5).sum()), diff.max())
            assert (got.values.argmax(1) == want.values.argmax(1)).mean() >= 0.99, aid
        else:
            np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-5, err_msg=aid)


def test_probe_reports_no_python_and_not_the_hosts_libc(phone):
    cp = phone.cli.run("devices", "probe", phone.uri, "--json")
    assert cp.returncode == 0, cp.stderr
    js = json.loads(cp.stdout)
    host = json.loads(phone.cli.run("devices", "probe", "local", "--json").stdout)
    assert not js["python"] and host["libc"] == "gnu" and js["libc"] != host["libc"], (js, host)
    assert str(js["runners"]["native"]).startswith("ready: "), js["runners"]


def test_collect_picks_native_and_equals_host(phone, tiny_run, tmp_path):
    """No runner or bundle option: the native runner, its bundle pushed once and checked by sha256 on the device;
    every .tflite/.pte output equals the host runtimes' within the tolerance of the architecture."""
    from rundir import RunDir

    run = _run_copy(tiny_run, tmp_path / "run")
    ids = _artifacts(run, phone.kind)
    assert {i.rsplit(".", 1)[1] for i in ids} == {"tflite", "pte"} and any(_integer_only(i) for i in ids), ids
    phone.sh(f"rm -rf {RUNNERS}")  # a device that has not seen the bundle yet
    if phone.kind == "phone-x86_64":  # the whole run, no options: .onnx / .ptl skipped with a note, never silently
        out = " ".join(_collect(phone, run, None).split())
        others = [a for a in json.loads((run / "manifest.json").read_text())["artifacts"]
                  if a["format"] not in ("tflite", "pte")]
        assert others and f"{len(others)} artifact(s) skipped, nothing on the device runs onnx, ptl" in out, out
        assert f"outputs of {len(ids)} artifact(s) on {phone.uri}" in out, out
    else:  # arm64 under qemu: the target artifacts only (time)
        _collect(phone, run, ids)
    _collect(phone, run, ids, device="local")
    rd = RunDir(run)
    _assert_like_host(rd, phone.uri, ids, phone.kind)
    for aid in ids:
        prov = json.loads(rd.output_provenance(phone.uri, aid).read_text())
        assert prov["runner"] == "native" and prov["device"]["android_api"] == 34, prov
    installed = phone.sh(f"ls -a {RUNNERS}").split()
    assert len(installed) == 3 and installed[2].startswith(f"{ARCH[phone.kind]}-"), installed  # ., .. and one
    bundle = Path(phone.cli.env["COMPLEAK_CACHE_DIR"]) / "runners" / ARCH[phone.kind] / installed[2].split("-", 1)[1]
    manifest = json.loads((bundle / "compleak-runner" / "manifest.json").read_text())
    sums = phone.sh(f"cd {RUNNERS}/{installed[2]} && sha256sum {' '.join(sorted(manifest['files']))}")
    assert dict(reversed(line.split()) for line in sums.splitlines()) == manifest["files"]
    assert phone.sh("ls /data/local/tmp/compleak").split() == ["runners"], "job workspaces removed"


def test_second_collect_does_not_push_again_unless_changed(phone, tiny_run, tmp_path):
    ids = [i for i in _artifacts(tiny_run, phone.kind) if i.endswith(".tflite")][:1]
    _collect(phone, _run_copy(tiny_run, tmp_path / "a"), ids)
    stamp = _runner_stamp(phone)
    time.sleep(1.1)  # a push now would give another mtime
    _collect(phone, _run_copy(tiny_run, tmp_path / "b"), ids)
    assert _runner_stamp(phone) == stamp, "the bundle was pushed again"
    lib = phone.sh(f"ls {RUNNERS}/*/lib/libLiteRt.so").strip()
    phone.sh(f"echo x >> {lib}")  # damaged on the device: found by sha256sum, pushed again
    _collect(phone, _run_copy(tiny_run, tmp_path / "c"), ids)
    assert _runner_stamp(phone) != stamp
    assert not [n for n in phone.sh(f"ls -a {RUNNERS}").split() if n.startswith(".new.")]


@pytest.mark.parametrize("phone", ["phone-x86_64"], indirect=True)
def test_device_going_away_mid_collect_keeps_chunks(phone, tiny_run, tmp_path, monkeypatch):
    """`devices down` while collecting: one-line DeviceError, the chunks already collected stay on disk; after
    `devices up` on the same port the rerun completes and equals the host."""
    from rich.console import Console

    from devices.errors import DeviceError
    from harness.collect.stage import collect_run
    from rundir import RunDir

    for key in ("ANDROID_ADB_SERVER_PORT", "COMPLEAK_CACHE_DIR", "HOME"):
        monkeypatch.setenv(key, phone.cli.env[key])
    monkeypatch.delenv("ADB_SERVER_SOCKET", raising=False)
    run = _run_copy(tiny_run, tmp_path / "run")
    ids = [i for i in _artifacts(run, phone.kind) if "-target-" in i][:2]
    partial = RunDir(run).outputs_dir(phone.uri) / ".partial"
    downed = threading.Event()

    def take_it_away() -> None:
        end = time.monotonic() + 300
        while time.monotonic() < end and not list(partial.glob("*/*/*.npz")):
            time.sleep(0.01)
        phone.cli.run("devices", "down", phone.kind)
        downed.set()

    threading.Thread(target=take_it_away, daemon=True).start()
    quiet = Console(quiet=True)
    with pytest.raises(DeviceError) as exc:
        collect_run(run, device=phone.uri, artifacts=ids, batch_size=50, console=quiet, chunk_size=50)
    assert downed.wait(60) and "\n" not in str(exc.value) and phone.serial in str(exc.value), exc.value
    kept = list(partial.glob("*/*/*.npz"))
    assert kept, "the chunks already collected are kept"
    print("error after `devices down`:", exc.value)
    port = phone.serial.rsplit(":", 1)[1]
    up = phone.cli.run("devices", "up", phone.kind, "--port", port)
    assert up.returncode == 0 and up.stdout.strip().splitlines()[-1] == phone.uri, up.stderr
    collect_run(run, device=phone.uri, artifacts=ids, batch_size=50, console=quiet, chunk_size=50)
    collect_run(run, device="local", artifacts=ids, batch_size=50, console=quiet, chunk_size=600)
    _assert_like_host(RunDir(run), phone.uri, ids, phone.kind)
    assert not partial.exists()
