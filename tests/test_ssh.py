"""The ssh device against a real OpenSSH server (tests/sshd_fixtures.py: own keys, own network namespace)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sshd_fixtures import SshServer
from test_local import record_for
from test_runner import make_tflite_models

from devices.errors import DeviceError, UnreachableDevice
from devices.local import LocalDevice
from devices.runners.choose import choose_runner
from devices.runners.python import PythonRunner
from devices.ssh import SshDevice
from devices.uri import connect

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def tfl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tflite_models(tmp_path_factory.mktemp("ssh-models"))


def _connect(server: SshServer, **kw: object) -> SshDevice:
    kw.setdefault("identity", server.identity)
    kw.setdefault("known_hosts", server.known_hosts)
    kw.setdefault("timeout", 10.0)
    dev = connect(server.uri, **kw)  # type: ignore[arg-type]
    assert isinstance(dev, SshDevice)
    return dev


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True).stdout.split()[1]


def test_outputs_equal_local_run(sshd_server: SshServer, tfl: dict, tmp_path: Path) -> None:
    rec = record_for(tfl["int8"])
    local = LocalDevice()
    local.base_dir = str(tmp_path / "local-ws")
    local_values, _ = choose_runner(local, rec, batch_size=16).run(local, tfl["int8"], rec, tfl["x"])
    with _connect(sshd_server, workspace=str(tmp_path / "remote-ws")) as dev:
        assert dev.id == sshd_server.device_id
        runner = choose_runner(dev, rec, batch_size=16)
        assert isinstance(runner, PythonRunner)
        values, prov = runner.run(dev, tfl["int8"], rec, tfl["x"])
        leftovers = dev.run(["sh", "-c", f"ls {dev.workspace_base()}"], timeout=10).text.split()
    np.testing.assert_array_equal(values, local_values)
    assert prov["batch_sizes"] == [16, 16, 16, 16] and prov["runtime"] == "ai_edge_litert"
    assert not [p for p in leftovers if p.startswith("job.")]  # workspace removed


def test_unknown_host_key_refused_by_default(sshd_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DeviceError) as exc:
        _connect(sshd_server, known_hosts=empty)
    msg = str(exc.value)
    assert "\n" not in msg and "unknown host key" in msg and sshd_server.host in msg and "--trust-new-host" in msg
    assert _fingerprint(sshd_server.workdir / "ssh_host_ed25519_key.pub") in msg
    assert empty.read_text() == ""  # nothing recorded


def test_trust_new_host_accepts_and_records(sshd_server: SshServer, tmp_path: Path) -> None:
    kh = tmp_path / "sub" / "known_hosts"
    notices: list[str] = []
    with _connect(sshd_server, known_hosts=kh, trust_new_host=True, log=notices.append) as dev:
        assert dev.run(["true"], timeout=10).ok
    assert len(notices) == 1 and "trusted new host key" in notices[0] and str(kh) in notices[0]
    assert kh.read_text().split() == sshd_server.host_key_line.split()
    with _connect(sshd_server, known_hosts=kh) as dev:  # now known: no flag needed
        assert dev.run(["true"], timeout=10).ok
    # OpenSSH itself accepts the recorded entry
    res = subprocess.run(["ssh-keygen", "-F", sshd_server.host, "-f", str(kh)], capture_output=True, text=True)
    assert res.returncode == 0


def test_changed_host_key_refused_even_with_trust(sshd_server: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "known_hosts"
    name = sshd_server.host_key_line.split()[0]
    kh.write_text(f"{name} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    with pytest.raises(DeviceError, match="HOST KEY CHANGED.*ssh-keygen -f"):
        _connect(sshd_server, known_hosts=kh, trust_new_host=True)


def test_wrong_key_is_one_line_auth_error(sshd_server: SshServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(DeviceError, match="authentication failed for user") as exc:
        _connect(sshd_server, identity=stranger)
    assert "\n" not in str(exc.value)


def test_workspace_path_with_spaces_and_quotes(sshd_server: SshServer, tfl: dict, tmp_path: Path) -> None:
    base = tmp_path / "it's a \"work space\" $(touch pwned) ;`id`"
    rec = record_for(tfl["float"])
    with _connect(sshd_server, workspace=str(base)) as dev:
        values, _ = choose_runner(dev, rec).run(dev, tfl["float"], rec, tfl["x"])
        with dev.workspace() as ws:
            assert ws.startswith(str(base) + "/job.")
            assert dev.run(["test", "-d", ws], timeout=10).ok
        assert not dev.run(["test", "-e", ws], timeout=10).ok
        with pytest.raises(DeviceError, match="refusing to remove"):
            dev.remove_workspace(str(tmp_path), dev.workspace_base())  # confined to job directories
        with pytest.raises(DeviceError, match="refusing to remove"):
            dev.remove_workspace(f"{dev.workspace_base()}/job.x/../..", dev.workspace_base())
    assert tmp_path.is_dir()
    np.testing.assert_allclose(values, tfl["keras"], atol=1e-5)
    assert base.is_dir() and not list(base.iterdir())  # only job directories were removed
    assert not list(Path.home().glob("pwned")) and not list(tmp_path.rglob("pwned"))


def test_large_stdout_and_stderr_do_not_deadlock(sshd_server: SshServer) -> None:
    script = "i=0; while [ $i -lt 40 ]; do head -c 131072 /dev/zero; head -c 131072 /dev/zero >&2; i=$((i+1)); done"
    with _connect(sshd_server) as dev:
        res = dev.run(["sh", "-c", script], timeout=60)
    assert res.ok and len(res.stdout) == len(res.stderr) == 40 * 131072


def test_command_timeout_and_connection_loss(sshd_server: SshServer) -> None:
    with _connect(sshd_server) as dev:
        with pytest.raises(DeviceError, match="did not finish within 1s"):
            dev.run(["sleep", "30"], timeout=1)
        assert dev.run(["true"], timeout=10).ok  # the connection survives a timed-out command
        killer = threading.Timer(1.0, sshd_server.kill)
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="connection lost") as exc:
            dev.run(["sleep", "30"], timeout=60)
        killer.join()
        assert time.monotonic() - t0 < 20 and "\n" not in str(exc.value)
        with pytest.raises(DeviceError, match="connection lost"):
            dev.ping()


def test_ping_is_one_round_trip_on_the_open_connection(sshd_server: SshServer) -> None:
    with _connect(sshd_server) as dev:
        rtts = [dev.ping() for _ in range(5)]
        assert all(0 < r < 5 for r in rtts)  # loopback: well under a second each
        assert dev.run(["true"], timeout=10).ok  # the connection is still usable


def test_unreachable_host_gives_up_at_the_deadline(sshd_server: SshServer) -> None:
    sshd_server.kill()
    t0 = time.monotonic()
    with pytest.raises(UnreachableDevice, match="not reachable within 2s"):
        _connect(sshd_server, timeout=2.0)
    assert time.monotonic() - t0 < 10
    sshd_server.restart()
    with _connect(sshd_server) as dev:  # and the retry loop connects once it is back
        assert dev.run(["true"], timeout=10).ok


def test_cli_probe_over_ssh(sshd_server: SshServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from harness.cli.main import app

    base = ["devices", "probe", sshd_server.uri, "--identity", str(sshd_server.identity)]
    res = CliRunner().invoke(app, [*base, "--known-hosts", str(sshd_server.known_hosts)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert sshd_server.device_id in res.output and "runtime ai_edge_litert" in res.output
    empty = tmp_path / "kh"
    empty.write_text("")
    res = CliRunner().invoke(app, [*base, "--known-hosts", str(empty)], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "unknown host key" in res.output and "--trust-new-host" in res.output
    assert "Traceback" not in res.output


def test_unresolvable_host_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(UnreachableDevice, match="cannot resolve host name 'no-such-host.invalid'"):
        connect("ssh://pi@no-such-host.invalid", timeout=30.0)
    assert time.monotonic() - t0 < 15  # not retried until the deadline
