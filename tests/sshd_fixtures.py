"""A real OpenSSH server for tests: ``/usr/sbin/sshd -D -e -f <generated config>``.

The fixture generates its own host key and user key, starts sshd in its OWN network namespace with its own
address (a veth pair, host side 10.231.K.1/30, namespace side 10.231.K.2/30) where namespaces work (root), and on
a free loopback port otherwise. It yields an :class:`SshServer` with the device URI, the user's identity file, a
known_hosts file pre-populated with the host key, and ``kill()`` / ``restart()``. Teardown kills every process
it started and deletes the namespace and the veth pair.

``tests/conftest.py`` lists this module in ``pytest_plugins``, so any test module can just take ``sshd_server``
as a parameter (import only :class:`SshServer`, for annotations).
"""

from __future__ import annotations

import getpass
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

SSHD = "/usr/sbin/sshd"
_counter = itertools.count()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the tests' peers bind it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Netns:
    name: str
    host_if: str
    host_addr: str
    ns_addr: str

    @classmethod
    def create(cls) -> "_Netns | None":
        """A namespace with a veth pair and a /30 of its own, or None where namespaces are unavailable."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return None
        used = _run("ip", "-o", "addr", check=False).stdout
        tag = f"{os.getpid() % 100000}{next(_counter)}"
        for k in itertools.chain(range(os.getpid() % 200, 250), range(0, os.getpid() % 200)):
            if f"10.231.{k}." not in used:
                break
        else:
            return None
        ns = cls(f"compleak-sshd-{tag}", f"ck{tag}h"[:15], f"10.231.{k}.1", f"10.231.{k}.2")
        peer = f"ck{tag}n"[:15]
        steps = [
            ("ip", "netns", "add", ns.name),
            ("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", peer),
            ("ip", "link", "set", peer, "netns", ns.name),
            ("ip", "addr", "add", f"{ns.host_addr}/30", "dev", ns.host_if),
            ("ip", "link", "set", ns.host_if, "up"),
            ("ip", "netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_addr}/30", "dev", peer),
            ("ip", "netns", "exec", ns.name, "ip", "link", "set", peer, "up"),
            ("ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            if _run(*step, check=False).returncode != 0:
                ns.delete()
                return None
        return ns

    def pids(self) -> list[int]:
        res = _run("ip", "netns", "pids", self.name, check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    def delete(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _run("ip", "link", "del", self.host_if, check=False)
        _run("ip", "netns", "del", self.name, check=False)


@dataclass
class SshServer:
    """A running sshd. ``uri`` is ``ssh://user@host:port?python=<this Python>`` (device id without the query:
    ``device_id``); ``identity`` the user's private key;
    ``known_hosts`` a file holding the server's host key; ``host_key_line`` that entry."""

    uri: str
    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    host_key_line: str
    config: Path
    workdir: Path
    netns: _Netns | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def device_id(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        base = [SSHD, "-D", "-e", "-f", str(self.config)]
        return ["ip", "netns", "exec", self.netns.name, *base] if self.netns else base

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation directory
        log = open(self.workdir / "sshd.log", "ab")
        self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.workdir / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not come up on {self.host}:{self.port}")

    def kill(self) -> None:
        """Kill sshd and every session it forked (connections drop at once)."""
        pids = set(self.netns.pids()) if self.netns else set()
        if self.proc is not None:
            pids.add(self.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None and not self.netns:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        if self.netns:
            self.netns.delete()


def start_sshd(workdir: Path, netns: bool = True) -> SshServer:
    """Generate keys and config under ``workdir`` and start sshd (own namespace if ``netns`` and possible,
    loopback otherwise)."""
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    host_key, user_key = workdir / "ssh_host_ed25519_key", workdir / "id_ed25519"
    for key, comment in ((host_key, "compleak-test-host"), (user_key, "compleak-test-user")):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key))
    authorized = workdir / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    os.chmod(authorized, 0o600)
    ns = _Netns.create() if netns else None
    host, port = (ns.ns_addr, 22) if ns else ("127.0.0.1", free_port())
    user = getpass.getuser()
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host}",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin prohibit-password",  # test server only: root may log in with the test key
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    name = host if port == 22 else f"[{host}]:{port}"
    host_key_line = f"{name} {' '.join(host_key.with_suffix('.pub').read_text().split()[:2])}"
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(host_key_line + "\n")
    server = SshServer(
        uri=f"ssh://{user}@{host}:{port}?python={sys.executable}",
        host=host,
        port=port,
        user=user,
        identity=user_key,
        known_hosts=known_hosts,
        host_key_line=host_key_line,
        config=config,
        workdir=workdir,
        netns=ns,
    )
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A fresh OpenSSH server (own host key, user key, namespace) for one test; removed afterwards."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.close()
