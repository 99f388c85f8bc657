"""An embedded Ray confined to this user and this machine (issue 26): loopback-only sockets (read with ``ss``), token
authentication whatever the environment says, a private folder and token that another local user (``nobody``)
cannot read, no process or folder left behind after SIGKILL of the driver, SIGTERM as one line that keeps finished
work, a bounded join of a wrong ``--ray-address``, and a log copy that never follows a link.

Real Ray, real processes, a real second user; nothing is simulated.
"""

from __future__ import annotations

import ipaddress
import json
import operator
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from build_fixtures import digits_toml
from hostile_fixtures import TreeState, cli_refuses

from harness.execution import ExecOptions, RayExecutor, Unit
from harness.execution.ray_guard import MARKER_ENV, copy_logs
from harness.execution.ray_watchdog import instance_pids

ROOT = Path(__file__).resolve().parents[1]
TINY = digits_toml("confined", shadows=3, epochs=2, torch=("original", "prune-0.5"))


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every TCP/UDP socket the given processes listen on (``ss -lntupH``)."""
    out = subprocess.run(["ss", "-lntupH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        users = fields[-1] if fields[-1].startswith("users:") else ""
        owners = {int(p.split("=")[1]) for p in users.replace(")", ",").split(",") if p.startswith("pid=")}
        if owners & pids:
            found.append((fields[4], users))
    return found


def _is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]").split("%")[0]
    if host in ("*", "0.0.0.0", "::"):
        return False
    ip = ipaddress.ip_address(host)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_embedded_ray_listens_on_loopback_only_and_keeps_its_files_private() -> None:
    with RayExecutor(ExecOptions(), None) as ex:
        assert [r for _, r in ex.run([Unit("mul", operator.mul, (6, 7))])] == [42]
        guard = ex._guard
        assert guard is not None and guard.root is not None
        root = guard.root
        pids = set(instance_pids(guard.instance)) | {os.getpid()}
        sockets = _listening(pids)
        assert len(sockets) >= 4, sockets  # GCS, raylet (2), the driver's and a worker's gRPC servers
        assert all(_is_loopback(a) for a, _ in sockets), sockets
        assert stat.S_IMODE(guard.root.stat().st_mode) == 0o700
        token = guard.root / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
        if os.geteuid() == 0 and shutil.which("runuser"):  # a real second local user cannot read or list them
            for argv in (["cat", str(token)], ["ls", str(guard.root)], ["ls", str(guard.temp_dir)]):
                res = subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True)
                assert res.returncode != 0 and "Permission denied" in res.stderr, (argv, res)
        else:
            pytest.skip("the second-user check needs root and runuser (util-linux)")
    assert guard.root is None and not root.exists()  # the private folder is gone after close


def test_auth_disabled_in_the_environment_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TINY)
    with TreeState(tmp_path):
        cli_refuses(["build", str(cfg), "--out", str(tmp_path / "run")], "RAY_AUTH_MODE", "--no-ray",
                    env={"RAY_AUTH_MODE": "disabled"})
    assert not (tmp_path / "run").exists()


_DRIVER = """
import sys, time
sys.path.insert(0, {root!r})
from harness.execution import ExecOptions, RayExecutor, Unit
ex = RayExecutor(ExecOptions(), None)
ex.start()
print(ex._guard.instance, ex._guard.root, flush=True)
list(ex.run([Unit("sleep", time.sleep, (0.1,))]))
print("ready", flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_driver_leaves_no_ray_process_and_no_folder(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER.format(root=str(ROOT))], stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)  # fmt: skip
    try:
        instance, root = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        assert instance_pids(instance) and Path(root).is_dir()
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while (instance_pids(instance) or Path(root).exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = instance_pids(instance)
    assert not left, f"Ray processes left behind: {left}"
    assert not Path(root).exists()


def test_sigterm_is_one_line_and_keeps_finished_work(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "build", str(cfg), "--out", str(run)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # the first finished unit's records are in the manifest: stop the build there
            if json.loads((run / "manifest.json").read_text())["artifacts"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    assert proc.poll() is None, "the build finished before it could be stopped; make TINY larger"
    instances = _instances_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc == 143, (tmp_path / "err").read_text()[-3000:]
    lines = [ln for ln in (tmp_path / "err").read_text().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "terminated (SIGTERM)" in errors[0] and "Traceback" not in "\n".join(lines), lines
    kept = json.loads((run / "manifest.json").read_text())["artifacts"]
    assert kept and all((run / a["path"]).is_file() for a in kept)  # finished work stays, valid
    time.sleep(5)
    assert not any(instance_pids(i) for i in instances)


def _instances_of(pid: int) -> set[str]:
    """The embedded Ray instance(s) a process started (the marker in its children's environment)."""
    found = set()
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            try:
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(MARKER_ENV.encode() + b"="):
                    found.add(item.split(b"=", 1)[1].decode())
        time.sleep(0.2)
    return found


def test_a_wrong_ray_address_fails_in_one_line_within_the_timeout(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TINY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    t0 = time.monotonic()
    cli_refuses(["build", str(cfg), "--out", str(tmp_path / "a"), "--ray-address", f"127.0.0.1:{closed}"],
                "cannot join the Ray cluster", "nothing answers")  # fmt: skip
    assert time.monotonic() - t0 < 30
    with socket.socket() as mute:  # accepts connections, never speaks Ray (in a subprocess: a join that never ends
        mute.bind(("127.0.0.1", 0))  # keeps trying on its thread, which must not outlive the test)
        mute.listen(8)
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "harness.cli", "build", str(cfg), "--out", str(tmp_path / "b"),
                              "--ray-address", f"127.0.0.1:{mute.getsockname()[1]}"], capture_output=True, text=True,
                             env={**os.environ, "COMPLEAK_RAY_JOIN_TIMEOUT": "5"}, cwd=tmp_path, timeout=120)
        assert time.monotonic() - t0 < 60
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "cannot join the Ray cluster" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "a").exists()  # an address nothing answers at is refused before any work


def test_ctrl_c_while_joining_a_silent_cluster(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TINY)
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "build", str(cfg), "--out", str(tmp_path / "r"),
                                 "--ray-address", f"127.0.0.1:{mute.getsockname()[1]}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
        time.sleep(15)  # well into the join (the build reads its config and plans first)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def test_the_log_copy_never_follows_a_link_or_reads_a_special_file(tmp_path: Path) -> None:
    src, dest = tmp_path / "logs", tmp_path / "copy"
    (src / "sub").mkdir(parents=True)
    (src / "raylet.out").write_text("a log line\n")
    (src / "sub" / "gcs.err").write_text("another\n")
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (src / "planted.log").symlink_to(secret)
    (src / "zero.log").symlink_to("/dev/zero")
    (src / "linked-dir").symlink_to(tmp_path)
    os.mkfifo(src / "fifo.log")
    (src / "socket.sock").write_text("")
    copied = copy_logs(src, dest)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["raylet.out", "sub/gcs.err"] and copied == len("a log line\n") + len("another\n")
    assert stat.S_IMODE((dest / "raylet.out").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "sub").stat().st_mode) == 0o700
