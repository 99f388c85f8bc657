"""Scale-out (issue 13): the build and the collection fan out on Ray with the same results as the serial path.

Real Ray, no mocks: a two-node local cluster (``ray start --head`` plus one ``ray start --address`` worker node,
one CPU each, on loopback, in a private temp dir) started by the module fixture and stopped at the end; real
OpenSSH servers (``tests/sshd_fixtures.start_sshd``, three of them) for the device fan-out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from sshd_fixtures import free_port

from rundir import RunDir, sha256_file

RAY = Path(sys.executable).with_name("ray")
K = 4  # reference (shadow) models

SCALE_TOML = f"""
[experiment]
name = "scale"
seed = 11

[data]
dataset = "digits"

[splits]
target_in = 150
target_out = 150
shadow_in = 150
shadow_out = 150
n_shadows = {K}
holdout_fraction = 0.1

[model]
arch = "cnn-small"

[train]
epochs = 2
batch_size = 32
optimizer = "adam"
lr = 0.003
threads = 1  # the same thread count serially and on a worker: bit-identical weights (docs/scale.md)

[compress]
finetune_epochs = 1
finetune_lr = 0.0005
torch = ["original", "prune-0.5"]

[export]
frameworks = ["torch"]
torch_formats = ["onnx"]
"""


@dataclass
class RayCluster:
    address: str
    temp_dir: Path

    def raylet_pids(self) -> list[int]:
        """The raylets of this cluster (their command line names its temp dir)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmd and cmd[0].endswith(b"raylet") and str(self.temp_dir).encode() in b" ".join(cmd):
                    out.append(int(d.name))
        return out

    def busy_workers(self) -> list[int]:
        """Worker processes of this cluster running a task (process title ``ray::_call``)."""
        raylets = set(self.raylet_pids())
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (d / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid in raylets and cmd.startswith(b"ray::_call"):
                out.append(int(d.name))
        return out


def _ray_cmd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], capture_output=True, text=True, timeout=180, env=env)


def ray_env() -> dict[str, str]:
    """Environment of every process of the test cluster and of its drivers: token authentication (Ray's default
    for new clusters) with Ray's own token file, ``~/.ray/auth_token`` (made by ``ray get-auth-token --generate``
    when missing, as an embedded Ray does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A head node and one worker node on loopback, 1 CPU each, stopped (and their temp dir removed) at the end."""
    if not RAY.exists():
        pytest.skip("ray is not installed in this environment (pip install 'ray==2.60.0')")
    temp = Path(tempfile.mkdtemp(prefix="ck-ray-"))  # short: Ray's Unix sockets live below it
    env = ray_env()
    token = _ray_cmd("get-auth-token", "--generate", env=env)
    assert token.returncode == 0, token.stderr[-2000:]
    port = free_port()
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    head = _ray_cmd(
        "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", str(temp),
        "--include-dashboard", "false", "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
        "--min-worker-port", "0", "--max-worker-port", "0", *common, env=env,
    )  # fmt: skip
    cluster = RayCluster(f"127.0.0.1:{port}", temp)
    try:
        assert head.returncode == 0, head.stderr[-2000:]
        worker = _ray_cmd(
            "start", "--address", cluster.address, "--node-ip-address", "127.0.0.1",
            "--dashboard-agent-listen-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0", *common, env=env,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield cluster
    finally:
        _stop(cluster, env)


def _stop(cluster: RayCluster, env: dict[str, str]) -> None:
    """Stop the two nodes of this cluster only (not any other Ray on the machine): SIGTERM, then SIGKILL, every
    process whose command line names this cluster's temp dir, and the raylets' workers."""
    def ours() -> list[int]:
        pids = set(cluster.busy_workers())
        raylets = set(cluster.raylet_pids())
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if str(cluster.temp_dir).encode() in cmd or ppid in raylets:
                pids.add(int(d.name))
        return sorted(pids)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
    import shutil

    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


class _Build:
    """``compleak build`` in a subprocess; its stdout/stderr go to files beside the run (no pipe to fill)."""

    def __init__(self, cfg: Path, out: Path, *extra: str) -> None:
        env = ray_env()
        self.log = out.with_name(out.name + ".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "build", str(cfg), "--out", str(out), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cfg.parent,
            )  # fmt: skip

    def wait(self) -> tuple[int, str]:
        rc = self.proc.wait(timeout=1200)
        return rc, self.log.read_text()


def _build(cfg: Path, out: Path, *extra: str) -> tuple[int, str]:
    return _Build(cfg, out, *extra).wait()


def _records(run: Path) -> dict[str, dict]:
    raw = json.loads((run / "manifest.json").read_text())
    ids = [a["id"] for a in raw["artifacts"]]
    assert len(ids) == len(set(ids)), f"duplicated records in {run}/manifest.json: {ids}"
    return {a["id"]: a for a in raw["artifacts"]}


def _assert_same_build(a: Path, b: Path) -> None:
    """Same manifest (every field of every record) and bit-identical artifact files; nothing extra on disk."""
    ra, rb = _records(a), _records(b)
    assert list(ra) == list(rb)  # same records, same (plan) order
    assert len(ra) == (1 + K) * 2
    for aid in ra:
        assert ra[aid] == rb[aid], aid
        fa, fb = a / ra[aid]["path"], b / rb[aid]["path"]
        assert fa.read_bytes() == fb.read_bytes(), aid
        assert sha256_file(fb) == rb[aid]["sha256"]
    on_disk = sorted(p.name for p in (b / "artifacts").glob("*.onnx"))
    assert on_disk == sorted(Path(r["path"]).name for r in rb.values())
    assert np.load(a / "splits.npz").files == np.load(b / "splits.npz").files


@pytest.fixture(scope="module")
def scale_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tmp_path_factory.mktemp("scale") / "scale.toml"
    cfg.write_text(SCALE_TOML)
    return cfg


@pytest.fixture(scope="module")
def serial_run(scale_config: Path) -> Path:
    """The K = 4 build made serially (``--no-ray``): the reference every Ray build must equal."""
    out = scale_config.parent / "serial"
    rc, log = _build(scale_config, out, "--no-ray")
    assert rc == 0, log[-3000:]
    return out


@pytest.mark.slow
def test_build_on_cluster_equals_serial_build(serial_run: Path, ray_cluster: RayCluster, scale_config: Path) -> None:
    out = scale_config.parent / "cluster"
    rc, log = _build(scale_config, out, "--ray-address", ray_cluster.address)
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log
    _assert_same_build(serial_run, out)


@pytest.mark.slow
def test_worker_killed_mid_build_loses_and_duplicates_nothing(
    serial_run: Path, ray_cluster: RayCluster, scale_config: Path
) -> None:
    out = scale_config.parent / "killed"
    build = _Build(scale_config, out, "--ray-address", ray_cluster.address)
    killed = None
    try:
        deadline = time.monotonic() + 900
        while killed is None and time.monotonic() < deadline and build.proc.poll() is None:
            if (out / "manifest.json").is_file() and _records(out):  # the first unit has finished
                busy = ray_cluster.busy_workers()
                if busy:
                    os.kill(busy[0], signal.SIGKILL)
                    killed = busy[0]
            time.sleep(0.2)
        rc, log = build.wait()
    finally:
        if build.proc.poll() is None:
            build.proc.kill()
    assert killed is not None, "no unit was running after the first one finished; nothing was killed"
    assert rc == 0, log[-3000:]
    # nothing lost, nothing duplicated: the serial build's records, each once, in plan order, each file matching its
    # own record, and no other file (no temp file of the killed attempt) in artifacts/
    want, got = _records(serial_run), _records(out)
    assert list(got) == list(want)
    for aid, rec in got.items():
        f = out / rec["path"]
        assert f.stat().st_size == rec["bytes"] and sha256_file(f) == rec["sha256"], aid
        same = {k: v for k, v in rec.items() if k not in ("sha256", "bytes", "host_accuracy")}
        assert same == {k: v for k, v in want[aid].items() if k not in ("sha256", "bytes", "host_accuracy")}, aid
    assert sorted(p.name for p in (out / "artifacts").iterdir() if p.is_file()) == sorted(
        Path(r["path"]).name for r in got.values()
    )


@pytest.mark.slow
@pytest.mark.ssh
def test_parallel_collection_on_three_ssh_devices_equals_sequential(
    serial_run: Path, ray_cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # this process is the driver, as `compleak audit` would be

    from rich.console import Console
    from sshd_fixtures import start_sshd

    from devices.spec import DeviceSpec
    from harness.collect.fanout import AuditDevice, collect_devices, prestart_collect_actors
    from harness.execution import ExecOptions, RayExecutor, SerialExecutor

    servers = []
    try:
        for i in range(3):
            servers.append(start_sshd(tmp_path / f"sshd{i}"))
        devices = [AuditDevice(DeviceSpec("local"))] + [
            AuditDevice(DeviceSpec(s.uri, identity=s.identity, known_hosts=s.known_hosts)) for s in servers
        ]
        runs = {}
        for name in ("sequential", "parallel"):
            runs[name] = tmp_path / name
            shutil.copytree(serial_run, runs[name])
        quiet = Console(quiet=True)
        with SerialExecutor() as ex:
            seq = collect_devices(runs["sequential"], devices, ex, quiet)
        with RayExecutor(ExecOptions(address=ray_cluster.address), runs["parallel"]) as ex:
            prestart_collect_actors(ex, devices)  # as `compleak audit` does before the build
            ex.start()
            assert sorted(ex.actors) == sorted(f"collect {s.device_id}" for s in servers)  # not the host's
            assert ex.wait_prestarted(timeout=300) == 3
            actors = ex.actors
            par = collect_devices(runs["parallel"], devices, ex, quiet)
            assert ex.actors == actors  # the collect ran in the prestarted actors
    finally:
        for s in servers:
            s.close()
    assert seq == par
    assert seq["local"] == (1 + K) * 2  # the host runs every artifact, the reference models' too
    for s in servers:
        assert seq[s.device_id] == 2  # a device runs only the target artifacts (shadows come from the host)
    for name in [d.device_id for d in devices]:
        a, b = RunDir(runs["sequential"]), RunDir(runs["parallel"])
        files = sorted(p.name for p in a.outputs_dir(name).glob("*.npz"))
        assert files == sorted(p.name for p in b.outputs_dir(name).glob("*.npz")) and files
        for f in files:
            with np.load(a.outputs_dir(name) / f) as za, np.load(b.outputs_dir(name) / f) as zb:
                assert sorted(za.files) == sorted(zb.files)
                for k in za.files:
                    assert np.array_equal(za[k], zb[k]), (name, f, k)


_JOIN_AFTER_IMPORT = """
import os, sys
import ray  # imported (and its authentication settings read) before the environment below is set
from harness.errors import HarnessError
from harness.execution.ray_executor import join_cluster
os.environ["RAY_AUTH_MODE"] = "token"
if sys.argv[2] == "wrong":
    os.environ["RAY_AUTH_TOKEN"] = "0" * 64
try:
    join_cluster(ray, sys.argv[1], timeout_s=90)
except HarnessError as exc:
    print("REFUSED", exc)
else:
    print("JOINED", sorted(n["Alive"] for n in ray.nodes()))
    ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("token", ["right", "wrong"])
def test_join_reads_the_authentication_environment_of_now(ray_cluster: RayCluster, token: str) -> None:
    """A driver that imported Ray before setting RAY_AUTH_* (a notebook, a test process that ran an embedded Ray
    first) joins with the token of now; a wrong token is one line naming the fix, not Ray's "Failed to connect"."""
    env = {k: v for k, v in ray_env().items() if k != "RAY_AUTH_MODE"}
    out = subprocess.run([sys.executable, "-c", _JOIN_AFTER_IMPORT, ray_cluster.address, token], capture_output=True,
                         text=True, timeout=180, env=env, cwd=Path(__file__).resolve().parents[1])
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    if token == "right":
        assert out.stdout.startswith("JOINED [True, True]"), out.stdout + out.stderr[-3000:]
    else:
        assert out.stdout.startswith("REFUSED cannot join the Ray cluster"), out.stdout + out.stderr[-3000:]
        assert "refused this driver's authentication token" in out.stdout and "RAY_AUTH_TOKEN" in out.stdout


def test_options_and_resource_suffix_are_checked() -> None:
    from harness.collect.fanout import split_resource
    from harness.errors import HarnessError
    from harness.execution import ExecOptions

    assert split_resource("ssh://pi@board.lan:22@ray:hub-a") == ("ssh://pi@board.lan:22", "hub-a")
    assert split_resource("ssh://pi@board.lan") == ("ssh://pi@board.lan", None)
    with pytest.raises(HarnessError, match="not a Ray resource name"):
        split_resource("adb://SERIAL@ray:a b")
    with pytest.raises(HarnessError, match="--workers"):
        ExecOptions(workers=0)
    with pytest.raises(HarnessError, match="exclude each other"):
        ExecOptions(serial=True, address="127.0.0.1:6379")


def test_user_error_in_a_ray_unit_is_the_same_one_line_error(tmp_path: Path) -> None:
    """A HarnessError raised inside a Ray task reaches the driver as itself (the CLI prints it as one line)."""
    import operator

    from harness.collect.fanout import split_resource
    from harness.errors import HarnessError
    from harness.execution import ExecOptions, RayExecutor, Unit

    with RayExecutor(ExecOptions(workers=1), tmp_path) as ex:  # embedded: starts on first use
        units = [Unit("ok", operator.mul, (21, 2)), Unit("bad", split_resource, ("adb://X@ray:a b",))]
        got = {}
        with pytest.raises(HarnessError, match=r"^--device adb://X@ray:a b: 'a b' is not a Ray resource name"):
            for u, r in ex.run(units):
                got[u.key] = r
        assert got == {"ok": 42}
        with pytest.raises(HarnessError, match=r"needs Ray resource 'hub-zz' .*ray start --resources"):
            list(ex.run([Unit("pinned", operator.mul, (1, 1), resources={"hub-zz": 1.0}, actor=True)]))
    assert list((tmp_path / "logs" / "ray").glob("session_*/"))  # Ray's own logs kept in the run directory


def test_actor_units_run_in_their_prestarted_actor_until_close(tmp_path: Path) -> None:
    """``prestart`` queues actor units until Ray starts, then starts them and runs their warm-up; every later run
    of the same key uses that one process (an audit's seeds reuse a device's actor); ``close`` ends it."""
    from harness.execution import ExecOptions, RayExecutor, Unit

    unit = Unit("collect dev-a", os.getpid, num_cpus=0.0, actor=True, warm=os.getpid)
    task = Unit("host", os.getpid)
    with RayExecutor(ExecOptions(workers=2), tmp_path) as ex:
        ex.prestart([unit, task])  # Ray has not started: nothing starts because of this alone
        assert ex.actors == {} and not (tmp_path / "logs").exists()
        ex.start()
        assert list(ex.actors) == ["collect dev-a"]  # the task is not an actor: not prestarted
        assert ex.wait_prestarted(timeout=180) == 1
        prestarted = ex.actors["collect dev-a"]
        first = dict((u.key, r) for u, r in ex.run([unit, task]))
        again = dict((u.key, r) for u, r in ex.run([unit]))
        assert ex.actors["collect dev-a"] == prestarted  # no second actor was made
        pid = first["collect dev-a"]
        assert again["collect dev-a"] == pid and pid not in (os.getpid(), first["host"])
        os.kill(pid, 0)  # alive between runs
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # closed: the actor's process ends
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the actor's process {pid} outlived the executor")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["build", "--workers", "0"], ("--workers", ">= 1")),
        (["build", "--no-ray", "--ray-address", "127.0.0.1:1"], ("--no-ray", "--ray-address")),
        (["audit", "--device", "ssh://pi@board.lan@ray:hub a"], ("hub a", "not a Ray resource name")),
    ],
)
def test_bad_execution_options_are_one_line_refusals(args: list[str], expect: tuple[str, ...], tmp_path: Path) -> None:
    from hostile_fixtures import cli_refuses

    cfg = tmp_path / "scale.toml"
    cfg.write_text(SCALE_TOML)
    run = tmp_path / "run"
    cli_refuses([args[0], str(cfg), "--out", str(run), *args[1:]], *expect)
    assert not run.exists()  # refused before anything was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.toml"]


TF_TOML = """
[experiment]
name = "scale-tf"
seed = 5

[data]
dataset = "digits"

[splits]
target_in = 150
target_out = 150
shadow_in = 150
shadow_out = 150
n_shadows = 1

[model]
arch = "cnn-small"

[train]
epochs = 2
batch_size = 32
threads = 1

[compress]
finetune_epochs = 1
representative_samples = 50
tf = ["original", "qat-int8"]

[export]
frameworks = ["tf"]
"""


@pytest.mark.slow
def test_tf_build_on_embedded_ray_equals_serial_build(tmp_path: Path) -> None:
    """TF too: the same bytes serially (both owners in one process) and on an embedded Ray (Keras name counters
    and op determinism must not depend on what a process built before)."""
    cfg = tmp_path / "tf.toml"
    cfg.write_text(TF_TOML)
    rc, log = _build(cfg, tmp_path / "serial", "--no-ray")
    assert rc == 0, log[-3000:]
    rc, log = _build(cfg, tmp_path / "ray", "--workers", "2")
    assert rc == 0, log[-3000:]
    a, b = _records(tmp_path / "serial"), _records(tmp_path / "ray")
    assert list(a) == list(b) and len(a) == 4
    for aid in a:
        assert a[aid] == b[aid], aid
        assert (tmp_path / "serial" / a[aid]["path"]).read_bytes() == (tmp_path / "ray" / b[aid]["path"]).read_bytes()
    assert list((tmp_path / "ray" / "logs" / "ray").glob("session_*/"))  # the embedded Ray's logs, in the run


def test_train_device_and_threads_are_config_keys_outside_every_cache_key(tmp_path: Path) -> None:
    from harness.config import ConfigError, load_experiment

    cfg = tmp_path / "e.toml"
    cfg.write_text(SCALE_TOML)
    base = load_experiment(cfg)
    cfg.write_text(SCALE_TOML.replace("threads = 1", 'threads = 3\ndevice = "cpu"'))
    other = load_experiment(cfg)
    assert (other.train.threads, other.train.device) == (3, "cpu") and base.train.device == "auto"
    assert base.train.model_dump(mode="json") == other.train.model_dump(mode="json")  # execution, not content
    assert base.section_hash("model", "train") == other.section_hash("model", "train")
    for bad, where in (('device = "gpu"', "train.device"), ("threads = 0", "train.threads")):
        cfg.write_text(SCALE_TOML.replace("threads = 1", bad))
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            load_experiment(cfg)
