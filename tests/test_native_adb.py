"""The native runner bundle over ADB (issue 14): the REAL adb client and server against the protocol-level adbd
stand-in (tests/adbd_standin.py), which runs the device's commands on this host, so the bundle is this host's
(``compleak runners build``, amd64 here). ADB cannot keep a command running (``AdbDevice.can_spawn`` is False), so
the runner is the one-shot one (``devices.runners.native_oneshot``): per chunk one ``compleak-runner --serve``
command with
request and reply files, parsed by the runner server's own checks. Its outputs must equal the host runtimes' bit
for bit (same binary, same libraries, same machine). The bundle carries its own glibc loader and C library
(docs/native.md, "The bundled loader"), so a bionic device takes it too; the NDK build of the same sources
(.github/workflows/native-runner-android.yml) stays an alternative.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adbd_standin import AdbdStandin  # noqa: E402

ADB = shutil.which("adb")
pytestmark = [pytest.mark.adb, pytest.mark.slow, pytest.mark.timeout(900)]
ARTIFACTS = ("tf-target-original.tflite", "tf-target-int8.tflite", "torch-target-original.pte")


@pytest.fixture(scope="module")
def bundle() -> Path:
    """This host's native runner bundle (built once, then reused from the user's cache)."""
    from devices.native.bundle import build_bundle

    return build_bundle()


@pytest.fixture(scope="module")
def dev(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """An AdbDevice for a connected stand-in phone, through a private adb server; no Android binaries anywhere."""
    if ADB is None:
        pytest.skip("the adb client is not installed (apt install adb)")
    from devices.adb import AdbDevice

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("adbhome")
    env = dict(os.environ, HOME=str(home), ANDROID_ADB_SERVER_PORT=str(port))
    env.pop("ADB_SERVER_SOCKET", None)

    def adb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADB, *args], env=env, capture_output=True, text=True, timeout=30)

    assert adb("start-server").returncode == 0
    daemon = AdbdStandin(tmp_path_factory.mktemp("phone"), {"ro.product.model": "Native Standin"}).start()
    try:
        adb("connect", daemon.serial)
        end = time.monotonic() + 20
        while time.monotonic() < end and "device" not in adb("-s", daemon.serial, "get-state").stdout:
            time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ANDROID_ADB_SERVER_PORT", str(port))
            mp.delenv("ADB_SERVER_SOCKET", raising=False)
            mp.setenv("COMPLEAK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))  # no Android binaries cached
            mp.setenv("COMPLEAK_NATIVE_BUNDLE", str(bundle))
            yield AdbDevice(daemon.serial, timeout=30)
    finally:
        adb("disconnect", daemon.serial)
        daemon.stop()
        adb("kill-server")


@pytest.fixture(scope="module")
def records(tiny_run: Path) -> dict[str, tuple[Path, object]]:
    from rundir import RunDir

    rd = RunDir(tiny_run)
    recs = {a.id: a for a in rd.load_manifest().artifacts}
    return {aid: (rd.artifact_path(recs[aid]), recs[aid]) for aid in ARTIFACTS}


def _queries(n: int) -> np.ndarray:
    return np.random.default_rng(5).random((n, 8, 8, 1), dtype=np.float32)


def test_probe_over_adb_reports_native_runner(dev) -> None:
    from devices.runners.choose import probe

    props = probe(dev)
    assert props.android_api == 34 and props.libc == "gnu"  # the stand-in runs on this host's glibc
    assert props.runners["native"].startswith("ready: "), props.runners


@pytest.mark.parametrize("aid", ARTIFACTS)
def test_native_bundle_over_adb_equals_host_runtime(dev, bundle, records, aid: str) -> None:
    """The bundle deploys through adb push and runs one-shot; outputs equal the host's runtime bit for bit."""
    from devices.ondevice.compleak_runner import load_model
    from devices.runners.choose import choose_runner
    from devices.runners.native import install_bundle
    from devices.runners.native_oneshot import NativeOneShotRunner

    path, rec = records[aid]
    runner = choose_runner(dev, rec, runner="native", batch_size=32)
    assert isinstance(runner, NativeOneShotRunner)
    x = _queries(70)
    with runner.session(dev, path, rec) as infer:  # two chunks: the model is pushed once, loaded per chunk
        first, prov = infer(x[:40])
        second, prov2 = infer(x[40:])
    values = np.concatenate([first, second])
    host_rt = "ai_edge_litert" if rec.format == "tflite" else "executorch"
    host = load_model(str(path), runtime=host_rt).predict(x, batch_size=32)
    np.testing.assert_array_equal(values, host)
    assert prov["runner"] == "native" and prov["runtime"] == ("litert" if rec.format == "tflite" else "executorch")
    assert prov["transfer"].startswith("one-shot") and prov["batch_sizes"] == [32, 8]
    assert prov["bundle_upload_seconds"] > 0 and "bundle_upload_seconds" not in prov2
    assert isinstance(prov["bundle_pushed"], bool) and "bundle_pushed" not in prov2
    assert install_bundle(dev, bundle)[1] is False  # installed once per device: checked by sha256, not pushed again
    assert dev.run(["sh", "-c", "ls /data/local/tmp/compleak"], timeout=30).text.split() == ["runners"]


def test_no_python_on_adb_device_chooses_native(dev, records) -> None:
    """Without a usable Python and without Android binaries, auto choice is the native runner (one-shot)."""
    from devices.runners.choose import choose_runner
    from devices.runners.native_oneshot import NativeOneShotRunner

    props = dev.properties()
    props.python = props.numpy = None
    path, rec = records["tf-target-original.tflite"]
    assert isinstance(choose_runner(dev, rec, props=props), NativeOneShotRunner)
    props.libc = "bionic"  # a phone: the bundle brings its own loader and C library
    assert isinstance(choose_runner(dev, rec, props=props), NativeOneShotRunner)
    assert isinstance(choose_runner(dev, rec, props=props, runner="native"), NativeOneShotRunner)


def test_broken_model_one_line_error_over_adb(dev, records, tmp_path: Path) -> None:
    from devices.errors import DeviceError
    from devices.runners.choose import choose_runner

    path, rec = records["tf-target-original.tflite"]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    runner = choose_runner(dev, rec, runner="native")
    with pytest.raises(DeviceError) as exc:
        runner.run(dev, bad, rec, _queries(4))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{dev.id}: {rec.id} on litert"), msg


def test_corrupt_model_and_tampered_bundle_one_line_over_adb(dev, records, bundle: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-shot path (issue 26): a truncated model is refused by the verifier on the device; a bundle file that
    does not match manifest.json is refused by the host before the push, and, changed after that check (skipped
    here), by the runner itself on the device before its hello."""
    from devices.errors import DeviceError
    from devices.runners.native_oneshot import NativeOneShotRunner

    path, rec = records["tf-target-original.tflite"]
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DeviceError) as exc:
        NativeOneShotRunner(bundle, "tflite").run(dev, truncated, rec, _queries(4))
    assert "\n" not in str(exc.value) and "not a valid TF-Lite model" in str(exc.value), exc.value
    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad)
    lib = bad / "lib" / "libLiteRt.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    runner = NativeOneShotRunner(bad, "tflite")
    with pytest.raises(DeviceError) as exc:
        runner.run(dev, path, rec, _queries(4))
    msg = str(exc.value)
    assert "\n" not in msg and "cannot install the native runner" in msg, msg
    assert "lib/libLiteRt.so does not match its sha256 in manifest.json" in msg
    monkeypatch.setattr("devices.runners.native.check_bundle_files", lambda *_: None)
    monkeypatch.setattr("devices.runners.native._device_digests", lambda *_: None)  # no sha256sum: pushed, unchecked
    with pytest.raises(DeviceError) as exc:
        runner.run(dev, path, rec, _queries(4))
    msg = str(exc.value)
    assert "\n" not in msg and "the runner bundle is not intact: lib/libLiteRt.so does not match" in msg, msg
    assert dev.run(["sh", "-c", "ls /data/local/tmp/compleak"], timeout=30).text.split() == ["runners"]
