"""Containers with a real engine (Podman): base images by debootstrap, toolchain and device images, a build stage
pinned to TF 2.14 inside ``toolchain-tf``, an emulated arm64 edge device (qemu-user-static) reached over SSH, and
the one-line errors (no engine, image missing, binfmt not registrable, port taken).

The image builds are cached by the engine and the rootfs tarballs in /var/cache/compleak, so only the first run on
a machine pays for them (about 20 minutes on 2 cores; see docs/containers.md). The per-example output differences
between the host (x86-64) and the emulated arm64 board are written to ``$COMPLEAK_TEST_REPORT_DIR`` (default: the
test's temporary directory) as ``arm64_vs_host.json`` and printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.errors import HarnessError
from harness.toolchain.container_build import build_in_container
from harness.toolchain.edge import check_port_free, edge_down, edge_up
from harness.toolchain.engine import detect_engine
from harness.toolchain.images import build_image, image_spec
from harness.toolchain.rootfs import build_base_image, ensure_binfmt, host_arch

ROOT = Path(__file__).resolve().parent.parent
FOREIGN = "arm64" if host_arch() == "amd64" else "amd64"
HAVE_PODMAN = shutil.which("podman") is not None
HAVE_FMNIST = Path("/usr/share/datasets/fashion-mnist").is_dir()
needs_podman = pytest.mark.skipif(not HAVE_PODMAN, reason="needs podman (scripts/setup.sh --test)")


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keys and the device registry of these tests live in a private cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPLEAK_CACHE_DIR", str(tmp_path_factory.mktemp("compleak-cache")))
        yield


# --------------------------------------------------------------------------- errors without a running engine


def test_no_engine_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: neither podman nor docker
    with pytest.raises(HarnessError, match=r"no container engine found.*install podman"):
        detect_engine(None)
    with pytest.raises(HarnessError, match=r"'podman' not found; install podman"):
        detect_engine("podman")
    with pytest.raises(HarnessError, match=r"unsupported container engine"):
        detect_engine("lxc")


def test_no_engine_cli_one_line(tmp_path: Path) -> None:
    from harness.cli.main import app

    res = CliRunner().invoke(app, ["devices", "up", "edge-arm64", "--engine", str(tmp_path / "bin" / "podman")])
    assert res.exit_code == 2
    out = res.output.strip()
    assert "not found" in out and "Traceback" not in out
    assert len(out.splitlines()) == 1


def test_binfmt_not_registrable(tmp_path: Path) -> None:
    # no qemu binfmt description for the foreign architecture
    with pytest.raises(HarnessError, match=r"qemu-.*\.conf not found; install qemu-user-static"):
        ensure_binfmt(FOREIGN, binfmt_dir=tmp_path / "binfmt", conf_dir=tmp_path / "empty")
    # a binfmt_misc whose register file cannot be written
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    cpu = {"arm64": "aarch64", "amd64": "x86_64"}[FOREIGN]
    (conf_dir / f"qemu-{cpu}.conf").write_text(f":qemu-{cpu}:M::\\x7fELF::/usr/bin/qemu-{cpu}-static:F\n")
    binfmt = tmp_path / "binfmt"
    (binfmt / "register").mkdir(parents=True)
    with pytest.raises(HarnessError, match=r"cannot emulate .*registering .* failed"):
        ensure_binfmt(FOREIGN, binfmt_dir=binfmt, conf_dir=conf_dir)
    # a disabled entry is reported with the command that enables it
    (binfmt / f"qemu-{cpu}").write_text("disabled\n")
    with pytest.raises(HarnessError, match=r"disabled; enable it"):
        ensure_binfmt(FOREIGN, binfmt_dir=binfmt, conf_dir=conf_dir)
    ensure_binfmt(host_arch(), binfmt_dir=binfmt, conf_dir=conf_dir)  # native: nothing to do


def test_port_taken() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(HarnessError, match=rf"port {port} on 127.0.0.1 is not available"):
            check_port_free(port)
    check_port_free(port)  # released: free again


def test_image_names_and_pins() -> None:
    tf = image_spec("toolchain-tf:2.14.0")
    assert tf.ref == "localhost/compleak-toolchain-tf:2.14.0"
    assert tf.build_args["TFMOT_VERSION"] == "0.7.5" and tf.build_args["TF_KERAS_VERSION"] == ""
    assert image_spec("toolchain-tf:2.21.0").build_args["TF_KERAS_VERSION"] == "2.21.0"
    dev = image_spec("device-linux", "arm64", ["tflite-runtime==2.14.0"])
    assert dev.ref == "localhost/compleak-device-linux:arm64-tflite-runtime-2.14.0"
    assert dev.build_command == "compleak images build device-linux --arch arm64 --runtime tflite-runtime==2.14.0"
    with pytest.raises(HarnessError, match=r"no tested tfmot/tf-keras pairing for TensorFlow 9\.9\.9"):
        image_spec("toolchain-tf:9.9.9")
    with pytest.raises(HarnessError, match=r"not a pip requirement"):
        image_spec("device-linux", "arm64", ["tflite-runtime; rm -rf /"])
    with pytest.raises(HarnessError, match=r"unknown image 'toolchain-jax'"):
        image_spec("toolchain-jax")


@pytest.mark.ssh
def test_registry_gives_connect_the_keys(tmp_path: Path) -> None:
    """A device in the registry is reached with no flags; once forgotten, its host key is unknown again."""
    sys.path.insert(0, str(Path(__file__).parent))
    from sshd_fixtures import start_sshd

    from devices import known_devices
    from devices.errors import DeviceError
    from devices.uri import connect

    server = start_sshd(tmp_path / "sshd")
    try:
        known_devices.register(known_devices.KnownDevice(
            uri=server.device_id, name="edge-test", identity=str(server.identity), known_hosts=str(server.known_hosts)))
        assert known_devices.edge_credentials(server.device_id) == (server.identity, server.known_hosts)
        with connect(server.device_id, timeout=10) as dev:
            assert dev.run(["echo", "registered"], timeout=30).text.strip() == "registered"
        assert [d.uri for d in known_devices.unregister("edge-test")] == [server.device_id]
        with pytest.raises(DeviceError, match=r"not in .*known_hosts"):  # the user's default file: unknown host
            with connect(server.device_id, timeout=5) as dev:
                dev.run(["true"], timeout=10)
    finally:
        server.close()
    # a registry entry whose key file is gone is a one-line error naming the fix
    known_devices.register(known_devices.KnownDevice(
        uri="ssh://root@127.0.0.1:1", name="edge-gone", identity=str(tmp_path / "nokey"), known_hosts=str(tmp_path)))
    with pytest.raises(DeviceError, match=r"run `compleak devices up edge-gone` again"):
        known_devices.edge_credentials("ssh://root@127.0.0.1:1")
    known_devices.unregister("edge-gone")


# --------------------------------------------------------------------------- with podman


@needs_podman
@pytest.mark.containers
def test_image_missing_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"image localhost/compleak-device-linux:arm64-tflite-runtime-2.13.9 not "
                                           r"found in podman; build it with: compleak images build device-linux "
                                           r"--arch arm64 --runtime tflite-runtime==2.13.9"):
        edge_up("edge-arm64", runtimes=["tflite-runtime==2.13.9"], engine="podman")
    exp = tmp_path / "exp.toml"
    exp.write_text('[export]\nframeworks = ["tf"]\n')
    with pytest.raises(
        HarnessError, match=r"compleak-toolchain-tf:2.13.1 not found.*compleak images build toolchain-tf:2.13.1"
    ):
        build_in_container(exp, tmp_path / "run", container="toolchain-tf:2.13.1", engine="podman")


EXPERIMENT = """
[experiment]
name = "containers-test"
seed = 3
[data]
dataset = "fashion-mnist"
[splits]
target_in = 300
target_out = 300
shadow_in = 300
shadow_out = 300
n_shadows = 1
[model]
arch = "cnn-small"
[train]
epochs = 1
batch_size = 64
[compress]
finetune_epochs = 0
tf = ["original", "dynamic-int8"]
[export]
frameworks = ["tf"]
[attack]
bootstrap = 0
"""


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build (or find cached) every image the slow tests need."""
    from rich.console import Console

    con = Console(stderr=True)

    def toolchain() -> dict[str, str]:
        return {"base-amd64": build_base_image("amd64", engine="podman", console=con),
                "toolchain-tf": build_image("toolchain-tf:2.14.0", "amd64", engine="podman", console=con)}

    def device() -> dict[str, str]:
        return {"base-arm64": build_base_image("arm64", engine="podman", console=con),
                "device-arm64": build_image("device-linux", "arm64", engine="podman", console=con)}

    # two independent chains, run side by side: each is partly network-bound (debootstrap, pip downloads)
    with ThreadPoolExecutor(max_workers=2) as pool:
        chains = [pool.submit(toolchain), pool.submit(device)]
        return {k: v for f in chains for k, v in f.result().items()}


@pytest.fixture(scope="module")
def run_214(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run built inside toolchain-tf:2.14.0."""
    d = tmp_path_factory.mktemp("run214")
    exp = d / "experiment.toml"
    exp.write_text(EXPERIMENT)
    return build_in_container(exp, d / "run", container="toolchain-tf:2.14.0", engine="podman")


@pytest.fixture(scope="module")
def edge_arm64(images: dict[str, str]) -> Iterator[str]:
    edge_down("edge-arm64", engine="podman")
    uri = edge_up("edge-arm64", engine="podman")
    yield uri
    edge_down("edge-arm64", engine="podman")


def heavy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks of the tests that build images and start devices."""
    for mark in (needs_podman, pytest.mark.containers, pytest.mark.slow,
                 pytest.mark.skipif(not HAVE_FMNIST, reason="needs dataset-fashion-mnist")):
        fn = mark(fn)
    return fn


@heavy
def test_images_are_tagged_and_cached(images: dict[str, str]) -> None:
    eng = detect_engine("podman")
    labels = eng.image_labels(images["toolchain-tf"])
    assert labels["io.compleak.tensorflow"] == "2.14.0" and labels["io.compleak.tfmot"] == "0.7.5"
    arch = eng.call(["image", "inspect", "--format", "{{.Architecture}}", images["device-arm64"]], "inspect").stdout
    assert arch.strip() == "arm64"
    # cached: a second request does not rebuild (same image id)
    before = eng.image_id(images["device-arm64"])
    assert build_image("device-linux", "arm64", engine="podman") == images["device-arm64"]
    assert eng.image_id(images["device-arm64"]) == before


@heavy
def test_build_in_toolchain_tf_214(run_214: Path, images: dict[str, str]) -> None:
    from devices.compat import tflite_op_versions
    from rundir import RunDir

    rd = RunDir(run_214)
    manifest = rd.load_manifest()
    assert {a.variant for a in manifest.artifacts} == {"original", "dynamic-int8"}
    image_id = detect_engine("podman").image_id(images["toolchain-tf"])
    for rec in manifest.artifacts:
        assert rec.toolchain["tensorflow"] == "2.14.0", rec.toolchain
        assert rec.toolchain["container"]["image"] == "localhost/compleak-toolchain-tf:2.14.0"
        assert rec.toolchain["container"]["image_id"] == image_id
        assert rec.toolchain["container"]["versions"]["tensorflow"] == "2.14.0"
    dyn = next(a for a in manifest.artifacts if a.variant == "dynamic-int8" and a.role == "target")
    ops = tflite_op_versions(rd.artifact_path(dyn))
    assert ops.get("FULLY_CONNECTED", 0) <= 11  # TF 2.14 emits versions tflite-runtime 2.14 runs (2.21: v12)


@heavy
def test_port_taken_on_up(images: dict[str, str]) -> None:
    edge_down("edge-arm64", engine="podman")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(HarnessError, match=rf"port {port} on 127.0.0.1 is not available"):
            edge_up("edge-arm64", engine="podman", port=port)
    assert detect_engine("podman").container_state("compleak-edge-arm64") is None


@heavy
def test_edge_arm64_probe_and_collect(edge_arm64: str, run_214: Path, tmp_path: Path) -> None:
    from devices.uri import connect
    from harness.collect.stage import collect_run
    from harness.compare import output_divergence
    from rundir import RunDir

    # the registry gives connect() the generated key and the recorded host key: no flags
    with connect(edge_arm64) as dev:
        props = dev.properties()
    assert props.arch == "aarch64"
    assert "tflite_runtime" in json.dumps(props.to_dict()) and "2.14.0" in json.dumps(props.to_dict())

    # the CLI, too, needs no --identity / --known-hosts
    env = dict(os.environ)
    cli = [sys.executable, "-m", "harness.cli"]
    probe = subprocess.run(cli + ["devices", "probe", edge_arm64], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
    assert probe.returncode == 0, probe.stderr
    assert "aarch64" in probe.stdout

    rd = RunDir(run_214)
    ids = [a.id for a in rd.load_manifest().targets()]
    res = subprocess.run(cli + ["collect", str(run_214), "--device", edge_arm64, "--artifacts", ",".join(ids)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    assert res.returncode == 0, res.stderr
    collect_run(run_214, "local", artifacts=ids, batch_size=512, console=None)

    report = {}
    for rec in rd.load_manifest().targets():
        host = rd.load_outputs("local", rec.id)
        arm = rd.load_outputs(edge_arm64, rec.id)
        prov = json.loads(rd.output_provenance(edge_arm64, rec.id).read_text())
        assert prov["device"]["id"] == edge_arm64
        div = output_divergence(host, arm, rec)
        assert div.n == len(host.index) == 600
        assert np.isfinite(div.max_abs_diff)
        assert div.argmax_flip_rate <= 0.02  # same artifact, same op semantics: only rounding may differ
        report[rec.id] = asdict(div)
    out_dir = Path(os.environ.get("COMPLEAK_TEST_REPORT_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "arm64_vs_host.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\narm64 (tflite-runtime 2.14.0 under qemu) vs host x86-64:\n" + json.dumps(report, indent=2))


@heavy
def test_tf221_artifact_refused_by_arm64_device(edge_arm64: str, tmp_path: Path) -> None:
    """A dynamic-range model converted by the host's TF 2.21 is refused up front, naming the toolchain fix."""
    from devices.errors import IncompatibleArtifact
    from harness.build.stage import build_run
    from harness.collect.stage import collect_run
    from rundir import RunDir

    exp = tmp_path / "experiment.toml"
    exp.write_text(EXPERIMENT.replace('tf = ["original", "dynamic-int8"]', 'tf = ["dynamic-int8"]'))
    run = build_run(exp, out=tmp_path / "run", data_dir=None, force=False, container=None, engine=None, console=None)
    rd = RunDir(run)
    target = rd.load_manifest().targets()[0]
    assert target.toolchain["tensorflow"].startswith("2.21")
    with pytest.raises(IncompatibleArtifact, match=r"FULLY_CONNECTED version 12 .*--container toolchain-tf:2\.14\.0"):
        collect_run(run, edge_arm64, artifacts=[target.id], batch_size=512, console=None)
    assert not rd.output_npz(edge_arm64, target.id).exists()


@heavy
def test_edge_down_forgets_device(images: dict[str, str]) -> None:
    from devices import known_devices
    from devices.errors import DeviceError
    from devices.uri import connect

    uri = edge_up("edge-arm64", engine="podman")
    assert known_devices.edge_credentials(uri) is not None
    edge_down("edge-arm64", engine="podman")
    assert detect_engine("podman").container_state("compleak-edge-arm64") is None
    assert known_devices.edge_credentials(uri) is None
    with pytest.raises(DeviceError):
        connect(uri, timeout=3).properties()
