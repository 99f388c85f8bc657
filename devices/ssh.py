"""The ``ssh`` device: a Linux board reached with paramiko.

Security rules kept here:
- host keys are always verified against ``known_hosts`` (default ``~/.ssh/known_hosts``); an unknown key is
  refused with a one-line error naming host and fingerprint, unless ``trust_new_host`` is set, in which case the
  key is accepted AND appended to ``known_hosts`` and a notice says so. A *changed* key is always refused.
- passwords come only from the caller (an environment variable named in the config) and are never logged.
- every argument of a remote command is ``shlex.quote``d; files move over SFTP.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shlex
import socket
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from devices.base import JOB_MARKER, CommandResult, Device, DeviceProcess, StderrTail, is_stale_job, job_marker
from devices.errors import DeviceError, UnreachableDevice

try:
    import paramiko
except ImportError:  # pragma: no cover - paramiko is in the 'devices' extra
    paramiko = None  # type: ignore[assignment]


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko public key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The host's name as a known_hosts entry: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


class _UnknownHostKey(Exception):
    def __init__(self, hostname: str, key: Any) -> None:
        super().__init__(hostname)
        self.hostname, self.key = hostname, key


def _policies() -> tuple[type, type]:
    class RefuseUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise _UnknownHostKey(hostname, key)

    class TrustAndRecord(paramiko.MissingHostKeyPolicy):
        def __init__(self, known_hosts: Path, log: Callable[[str], None]) -> None:
            self.known_hosts, self.log = known_hosts, log

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            client.get_host_keys().add(hostname, key.get_name(), key)
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.known_hosts, "a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            self.log(
                f"trusted new host key for {hostname} ({key.get_name()} {fingerprint(key)}) "
                f"and recorded it in {self.known_hosts}"
            )

    return RefuseUnknown, TrustAndRecord


def _transport_class() -> type:
    """paramiko's Transport preferring AES-GCM (AEAD: no separate HMAC pass, ~2x faster SFTP of query archives);
    every other algorithm stays available in paramiko's order for servers without GCM."""

    class GcmFirstTransport(paramiko.Transport):
        _preferred_ciphers = tuple(c for c in paramiko.Transport._preferred_ciphers if "gcm" in c) + tuple(
            c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c
        )

    return GcmFirstTransport


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


class SshDevice(Device):
    """A device reached over SSH. See the module docstring for the security rules."""

    can_spawn = True
    #: most bytes of stdout one :meth:`run` accepts (stderr: its last this many bytes are kept)
    max_output_bytes: int = 64 << 20
    #: most bytes :meth:`get` downloads
    max_file_bytes: int = 2 << 30
    fuse_probe = True  # every exec costs a channel and a login shell: probe system facts and runtimes at once

    def __init__(
        self,
        host: str,
        port: int = 22,
        user: str | None = None,
        identity: Path | str | None = None,
        known_hosts: Path | str | None = None,
        trust_new_host: bool = False,
        password: str | None = None,
        timeout: float = 30.0,
        keepalive: int = 15,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if paramiko is None:
            raise DeviceError("ssh devices need paramiko; pip install 'compleak-harness[devices]'")
        self.host, self.port = host, int(port)
        self.user = user or os.environ.get("USER") or "root"
        self.id = f"ssh://{self.user}@{host if ':' not in host else f'[{host}]'}:{self.port}"
        self.identity = Path(identity).expanduser() if identity else None
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
        self.trust_new_host = trust_new_host
        self._password = password
        self.timeout = float(timeout)
        self.keepalive = keepalive
        self.log = log or _stderr_log
        self._client: Any = None
        self._sftp: Any = None
        if self.identity is not None and not self.identity.is_file():
            raise DeviceError(f"{self.id}: identity file {self.identity} not found; pass an existing private key")
        self._connect()

    # ------------------------------------------------------------------ connection

    def __repr__(self) -> str:  # never shows the password
        return f"SshDevice({self.id!r})"

    def _connect(self) -> None:
        refuse, trust = _policies()
        deadline = time.monotonic() + self.timeout
        delay, last = 0.5, "no attempt"
        while True:
            client = paramiko.SSHClient()
            if self.known_hosts.is_file():
                try:
                    client.load_host_keys(str(self.known_hosts))
                except (OSError, paramiko.SSHException) as exc:
                    raise DeviceError(f"{self.id}: cannot read known_hosts {self.known_hosts} ({exc})") from None
            client.set_missing_host_key_policy(
                trust(self.known_hosts, self.log) if self.trust_new_host else refuse()
            )
            remaining = max(1.0, deadline - time.monotonic())
            try:
                client.connect(
                    self.host,
                    port=self.port,
                    username=self.user,
                    key_filename=str(self.identity) if self.identity else None,
                    password=self._password,
                    allow_agent=True,
                    look_for_keys=self.identity is None,
                    timeout=min(10.0, remaining),
                    banner_timeout=min(10.0, remaining),
                    auth_timeout=min(15.0, remaining),
                    transport_factory=_transport_class(),
                )
            except _UnknownHostKey as exc:
                client.close()
                raise DeviceError(
                    f"{self.id}: unknown host key for {exc.hostname} ({exc.key.get_name()} {fingerprint(exc.key)}) "
                    f"not in {self.known_hosts}; verify it and rerun with --trust-new-host to accept and record it"
                ) from None
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise DeviceError(
                    f"{self.id}: HOST KEY CHANGED for {known_hosts_name(self.host, self.port)} (now "
                    f"{fingerprint(exc.key)}); possible man-in-the-middle. If the device was reinstalled, remove the "
                    f"old entry with: ssh-keygen -f {shlex.quote(str(self.known_hosts))} -R "
                    f"{shlex.quote(known_hosts_name(self.host, self.port))}"
                ) from None
            except paramiko.AuthenticationException:
                client.close()
                how = f"key {self.identity}" if self.identity else "your default keys/agent"
                if self._password:
                    how += " and the password"
                raise DeviceError(
                    f"{self.id}: authentication failed for user {self.user} with {how}; pass --identity KEY or check "
                    f"the user's authorized_keys"
                ) from None
            except socket.gaierror as exc:
                client.close()
                raise UnreachableDevice(
                    f"{self.id}: cannot resolve host name {self.host!r} ({exc.strerror}); check the device URI"
                ) from None
            except (OSError, socket.timeout, EOFError, paramiko.SSHException) as exc:
                client.close()
                last = " ".join(str(exc).split()) or exc.__class__.__name__
                if time.monotonic() + delay >= deadline:
                    raise UnreachableDevice(
                        f"{self.id}: not reachable within {self.timeout:.0f}s ({last}); check that sshd runs and the "
                        f"address/port are right"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(self.keepalive)
            self._client = client
            return

    def _transport(self) -> Any:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise DeviceError(f"{self.id}: ssh connection lost; check the device and rerun to resume")
        return transport

    def ping(self) -> float:
        """Seconds of one SSH-level round trip over the open connection: a ``keepalive@openssh.com`` global
        request with want-reply, which sshd answers at once without starting anything (latency figures)."""
        transport = self._transport()
        t = time.perf_counter()
        if transport.global_request("keepalive@openssh.com", wait=True) is None and not transport.is_active():
            raise DeviceError(f"{self.id}: ssh connection lost; check the device and rerun to resume")
        return time.perf_counter() - t

    def close(self) -> None:
        for obj in (self._sftp, self._client):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
                    pass
        self._sftp = self._client = None

    # ------------------------------------------------------------------ commands

    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> CommandResult:
        command = " ".join(shlex.quote(str(a)) for a in argv)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        try:
            chan = self._transport().open_session(timeout=min(30.0, timeout))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(f"{self.id}: ssh connection lost ({_one_line(exc)}); rerun to resume") from None
        out = _BoundedSink(self.max_output_bytes)
        err = StderrTail(self.max_output_bytes)  # stderr only ever serves error messages: its tail is kept
        try:
            chan.exec_command(command)
            # stdout and stderr are read on threads from the start, so neither fills its window and blocks the
            # command while stdin is still being sent (a runner answers queries while the rest stream in)
            chan.settimeout(0.25)
            stop = threading.Event()
            pumps = [threading.Thread(target=_drain, args=(recv, sink, stop), daemon=True)
                     for recv, sink in ((chan.recv, out), (chan.recv_stderr, err))]
            for pump in pumps:
                pump.start()
            try:
                if stdin:  # a command that exits early takes less; its status and stderr tell why
                    self._send(chan, stdin, deadline, argv[0], timeout)
                chan.shutdown_write()
                while not chan.exit_status_ready() and any(p.is_alive() for p in pumps) and not out.over:
                    chan.status_event.wait(0.25)  # both streams closed: the exit status follows, or never comes
                    if not chan.exit_status_ready():
                        self._check_alive(deadline, argv[0], timeout)
                for pump in pumps:  # the streams end with the command; take what is still in flight
                    pump.join(timeout=max(0.0, min(30.0, deadline - time.monotonic())))
            finally:
                stop.set()
                if out.over:
                    chan.close()  # stop reading a reply that is too long; the command gets a hangup
                for pump in pumps:
                    pump.join(timeout=5)
            if out.over:
                raise DeviceError(
                    f"{self.id}: '{argv[0]}' printed more than {self.max_output_bytes} bytes, more than any compleak "
                    f"command answers; something on the device is wrong (a login script printing to stdout?)"
                )
            if not chan.exit_status_ready():
                chan.status_event.wait(max(0.0, min(30.0, deadline - time.monotonic())))
            if not chan.exit_status_ready():
                raise DeviceError(
                    f"{self.id}: ssh connection lost while running {argv[0]} (no exit status); rerun to resume"
                )
            status = chan.recv_exit_status()
            transport = self._client.get_transport() if self._client else None
            if status == -1 and not (transport and transport.is_active()):
                raise DeviceError(f"{self.id}: ssh connection lost while running {argv[0]}; rerun to resume")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(f"{self.id}: ssh connection lost while running {argv[0]} ({_one_line(exc)}); "
                              f"rerun to resume") from None
        finally:
            chan.close()
        return CommandResult(list(map(str, argv)), status, out.value(), err.value(),
                             time.perf_counter() - t0)

    def _check_alive(self, deadline: float, what: str, timeout: float, late: str = "did not finish") -> None:
        """Raise a one-line DeviceError when the connection dropped or the command ran past its deadline."""
        transport = self._client.get_transport() if self._client else None
        if not (transport and transport.is_active()):
            raise DeviceError(f"{self.id}: ssh connection lost while running {what}; rerun to resume")
        if time.monotonic() > deadline:
            raise DeviceError(
                f"{self.id}: '{what}' {late} within {timeout:.0f}s; raise the timeout or use a smaller batch"
            )

    def _send(self, chan: Any, data: bytes, deadline: float, what: str, timeout: float,
              late: str = "did not finish") -> bool:
        """Send ``data`` to the command's stdin, waiting on flow control without passing the deadline.

        Returns False when the command ended before taking all of it (its exit status and stderr tell why).
        """
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            if chan.exit_status_ready() or chan.closed:
                return False
            try:
                sent += chan.send(view[sent : sent + (1 << 18)].tobytes())
            except socket.timeout:
                self._check_alive(deadline, what, timeout, late)
        return True

    def spawn(self, argv: list[str], label: str = "") -> "SshProcess":
        command = " ".join(shlex.quote(str(a)) for a in argv)
        try:
            chan = self._transport().open_session(timeout=30.0)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(f"{self.id}: ssh connection lost ({_one_line(exc)}); rerun to resume") from None
        proc = SshProcess(self, chan, [str(a) for a in argv])
        proc.label = label
        return proc

    # ------------------------------------------------------------------ workspace (over SFTP: no shell involved)

    @contextmanager
    def workspace(self) -> Iterator[str]:
        """A fresh ``BASE/job.<random>`` directory (mode 0700) made over SFTP, removed over SFTP afterwards.

        Same contract as :meth:`Device.workspace`; SFTP needs no remote shell, so paths are never shell-parsed and
        two round trips through the login shell are saved per job.
        """
        base = self.workspace_base().rstrip("/")
        sftp = self._sftp_client()
        self._remove_stale_jobs(sftp, base)
        path = f"{base}/job.{secrets.token_hex(8)}"
        try:
            sftp.mkdir(path, mode=0o700)
            with sftp.open(f"{path}/{JOB_MARKER}", "wx") as fh:  # O_EXCL: never through an existing name
                fh.write(job_marker())
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise DeviceError(f"{self.id}: cannot create a workspace under {base} ({_one_line(exc)})") from None
        try:
            yield path
        finally:
            self.remove_workspace(path, base)

    def remove_workspace(self, path: str, base: str) -> None:
        """Delete a workspace made by :meth:`workspace` over SFTP; never anything outside ``base``."""
        base = base.rstrip("/")
        if not path.startswith(base + "/job.") or "/.." in path[len(base):]:
            raise DeviceError(f"{self.id}: refusing to remove {path!r}: not a workspace under {base}")
        try:
            self._sftp_rmtree(self._sftp_client(), path)
        except (OSError, paramiko.SSHException, EOFError, DeviceError):
            pass  # the connection is gone; the original error matters more

    def _remove_stale_jobs(self, sftp: Any, base: str) -> None:
        """Remove ``BASE/job.*`` workspaces a killed collect of this host left (their marker's pid is gone here)."""
        try:
            entries = [e for e in sftp.listdir_attr(base) if e.filename.startswith("job.")
                       and stat.S_ISDIR(e.st_mode or 0) and not stat.S_ISLNK(e.st_mode or 0)]
        except (OSError, paramiko.SSHException, EOFError):
            return
        for entry in entries:
            path = f"{base}/{entry.filename}"
            try:
                if stat.S_ISLNK(sftp.lstat(f"{path}/{JOB_MARKER}").st_mode or 0):
                    continue
                with sftp.open(f"{path}/{JOB_MARKER}", "r") as fh:
                    marker = fh.read(4096)
            except (OSError, paramiko.SSHException, EOFError):
                continue
            if is_stale_job(marker):
                self.remove_workspace(path, base)

    def _sftp_rmtree(self, sftp: Any, path: str) -> None:
        for entry in sftp.listdir_attr(path):
            child = f"{path}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0) and not stat.S_ISLNK(entry.st_mode or 0):
                self._sftp_rmtree(sftp, child)
            else:
                sftp.remove(child)  # a symlink is removed, never followed
        sftp.rmdir(path)

    # ------------------------------------------------------------------ files

    def _sftp_client(self) -> Any:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError, AttributeError) as exc:
                raise DeviceError(
                    f"{self.id}: cannot open SFTP ({_one_line(exc)}); is the sftp subsystem enabled?"
                ) from None
        return self._sftp

    def put(self, local: Path, remote: str) -> None:
        try:
            self._sftp_client().put(str(local), remote)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(
                f"{self.id}: upload of {Path(local).name} to {remote} failed ({_one_line(exc)})"
            ) from None

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to ``local``; at most :attr:`max_file_bytes` are read (a longer file is refused and the
        partial copy deleted)."""
        limit = self.max_file_bytes
        try:
            with self._sftp_client().open(remote, "rb") as src, open(local, "wb") as dst:
                src.prefetch()
                got = 0
                while block := src.read(min(1 << 20, limit + 1 - got)):
                    got += len(block)
                    if got > limit:
                        raise DeviceError(f"{self.id}: {remote} is larger than {limit} bytes, more than any compleak "
                                          f"output; not downloaded")
                    dst.write(block)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            Path(local).unlink(missing_ok=True)
            raise DeviceError(f"{self.id}: download of {remote} failed ({_one_line(exc)})") from None
        except DeviceError:
            Path(local).unlink(missing_ok=True)
            raise


class SshProcess(DeviceProcess):
    """A command on an exec channel, its stdin and stdout open (see :meth:`SshDevice.spawn`)."""

    def __init__(self, device: SshDevice, chan: Any, argv: list[str]) -> None:
        self.device_id, self.argv = device.id, argv
        self._dev, self._chan = device, chan
        self._abandoned = False
        self._tail = StderrTail()
        chan.settimeout(0.25)
        self._stop = threading.Event()
        self._pump = threading.Thread(target=_drain, args=(chan.recv_stderr, self._tail, self._stop), daemon=True)
        self._pump.start()

    def _ended(self, what: str) -> DeviceError:
        self._chan.status_event.wait(5)
        self._pump.join(timeout=2)
        if not self._chan.exit_status_ready():
            transport = self._dev._client.get_transport() if self._dev._client else None
            if not (transport and transport.is_active()):
                return DeviceError(f"{self.device_id}: ssh connection lost during {what}; rerun to resume")
        return self.ended_error(what)

    @contextmanager
    def _abandoned_on_failure(self, what: str) -> Iterator[None]:
        """Any failure during ``what`` (deadline, lost connection, the command ended) abandons the command and is
        raised as one line."""
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._abandon()
            raise DeviceError(f"{self.device_id}: ssh connection lost while {what} ({_one_line(exc)}); "
                              f"rerun to resume") from None
        except DeviceError:
            self._abandon()
            raise

    def send(self, data: bytes, deadline: float) -> None:
        with self._abandoned_on_failure("sending"):
            if not self._dev._send(self._chan, data, deadline, self.name, deadline - time.monotonic(),
                                   late="gave no answer"):
                raise self._ended("sending")

    def recv_exact(self, n: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        got = 0
        timeout = deadline - time.monotonic()
        with self._abandoned_on_failure("receiving"):
            while got < n:
                try:
                    data = self._chan.recv(min(n - got, 1 << 20))
                except socket.timeout:
                    self._dev._check_alive(deadline, self.name, timeout, late="gave no answer")
                    continue
                if not data:
                    raise self._ended("receiving")
                parts.append(data)
                got += len(data)
        return b"".join(parts)

    def _abandon(self) -> None:
        """Give up on the command (past its deadline, or its stream broke): close the channel, so sshd hangs up on
        it and it ends at its next write; it no longer counts as running."""
        self._abandoned = True
        try:
            self._chan.close()
        except (paramiko.SSHException, OSError, EOFError):
            pass

    def exit_status(self) -> int | None:
        if self._chan.exit_status_ready():
            return self._chan.recv_exit_status()
        return -1 if self._abandoned or self._chan.closed else None

    def stderr_text(self) -> str:
        return self._tail.text()

    def close(self, timeout: float = 10.0) -> int | None:
        if not (self._abandoned or self._chan.closed):
            try:
                self._chan.shutdown_write()  # EOF on stdin: the command ends
                self._chan.status_event.wait(timeout)
            except (paramiko.SSHException, OSError, EOFError):
                pass
        status = self.exit_status()
        self._stop.set()
        self._pump.join(timeout=2)
        self._chan.close()
        return status


class _BoundedSink:
    """Bytes of a stream up to ``limit``; ``over`` is set (and nothing more kept) once the stream passes it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.over = limit, 0, False
        self._parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            self.over = True
            return
        self._parts.append(data)
        self.size += len(data)

    def value(self) -> bytes:
        return b"".join(self._parts)


def _drain(recv: Callable[[int], bytes], sink: "_BoundedSink | StderrTail", stop: threading.Event) -> None:
    """Read a channel stream until EOF (or until ``stop`` is set and the stream is idle, or ``sink`` is full)."""
    while True:
        try:
            data = recv(1 << 16)
        except socket.timeout:
            if stop.is_set():
                return
            continue
        except (OSError, EOFError):
            return
        if not data:
            return
        sink.add(data)
        if getattr(sink, "over", False):
            return


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or exc.__class__.__name__
