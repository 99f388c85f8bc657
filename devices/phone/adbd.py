"""The project's ``adbd``: the ADB transport protocol, device side, for the phone-shaped test device.

It speaks, byte for byte as AOSP's ``protocol.txt`` / ``SERVICES.TXT`` / ``SYNC.TXT`` describe them, what the real
``adb`` client and server (Debian's ``adb``) need to ``adb connect`` to a device over loopback TCP, run ``adb shell``
and ``adb push`` / ``adb pull``:

* messages: 24-byte little-endian header ``command, arg0, arg1, data_length, data_check, magic`` with
  ``magic == command ^ 0xffffffff``; ``CNXN`` (version / max-payload negotiation and the device banner),
  ``AUTH`` (TOKEN / SIGNATURE / RSAPUBLICKEY, verified against an ``adb_keys`` file exactly as adbd does, so an
  unknown host key leaves the device "unauthorized"), ``OPEN``, ``OKAY`` (per-stream flow control: one ``WRTE``
  in flight per stream), ``WRTE``, ``CLSE``.
* services: ``shell:CMD`` (the legacy raw shell: stdout and stderr interleaved on one stream and no exit status,
  because the banner does not advertise ``shell_v2`` and the client falls back to it) and ``sync:`` with
  ``STAT`` (v1), ``LIST`` (v1), ``SEND`` (``DATA`` chunks, ``DONE`` with mtime), ``RECV`` and ``QUIT``.
  The banner advertises no feature flags, so the client uses only these.

Every byte the host sends is bounded (payload size, sync path length, DATA chunk size). :class:`AdbDaemon` is the
protocol; WHERE a shell command runs and WHAT a sync path means is its subclass's business: the phone-shaped
device (:mod:`devices.phone.device`) runs them inside its root file system as uid 2000; the tests' stand-in
(``tests/adbd_standin.py``) runs them on the host in a sandbox folder.
"""

from __future__ import annotations

import base64
import os
import queue
import secrets
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, Self

# ----------------------------------------------------------------------------------------------- wire format

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257

A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024  # what this device offers; the connection uses min(host's, ours)

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE = 20

SYNC_DATA_MAX = 64 * 1024

_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN", A_OKAY: "OKAY", A_CLSE: "CLSE",
          A_WRTE: "WRTE"}

HEADER = struct.Struct("<6I")

def checksum(data: bytes) -> int:
    """The v1 payload checksum: the byte sum modulo 2**32 (skipped by peers at version >= 0x01000001)."""
    return sum(data) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """One ADB message: header (with magic and checksum) followed by the payload."""
    return HEADER.pack(command, arg0, arg1, len(data), checksum(data), command ^ 0xFFFFFFFF) + data


# ----------------------------------------------------------------------------------------------- RSA keys


def parse_adb_public_key(line: str):
    """An ``adbkey.pub`` / ``adb_keys`` line (base64 of Android's RSAPublicKey struct + comment) -> RSA key.

    The struct is little-endian: ``uint32 len`` (modulus words), ``uint32 n0inv``, ``uint32 n[len]``,
    ``uint32 rr[len]``, ``int32 exponent``.
    """
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    blob = base64.b64decode(line.strip().split()[0])
    (words,) = struct.unpack_from("<I", blob, 0)
    n = int.from_bytes(blob[8 : 8 + 4 * words], "little")
    (e,) = struct.unpack_from("<I", blob, 8 + 8 * words)
    return RSAPublicNumbers(e, n).public_key()


def adb_public_key_line(private_key, comment: str = "") -> str:
    """The ``adbkey.pub`` line of an RSA private key (what adb writes next to ``adbkey``): base64 of Android's
    RSAPublicKey struct (the layout :func:`parse_adb_public_key` reads), then a space and ``comment``."""
    numbers = private_key.public_key().public_numbers()
    n, e = numbers.n, numbers.e
    words = (n.bit_length() + 31) // 32
    n0inv = (-pow(n, -1, 1 << 32)) % (1 << 32)
    rr = pow(2, 64 * words, n)
    blob = (struct.pack("<II", words, n0inv) + n.to_bytes(4 * words, "little") + rr.to_bytes(4 * words, "little")
            + struct.pack("<I", e))
    return base64.b64encode(blob).decode("ascii") + (f" {comment}" if comment else "")


def verify_token_signature(key, token: bytes, signature: bytes) -> bool:
    """adbd's check: RSA PKCS#1 v1.5 over the 20-byte token taken as a SHA-1 digest."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    try:
        key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        return True
    except (InvalidSignature, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- streams


class StreamClosed(Exception):
    """The host closed the stream (or the connection died) while a service was using it."""


class Stream:
    """One OPENed service stream: our id, the host's id, flow control and the inbound byte queue."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbound: queue.Queue[bytes | None] = queue.Queue()
        self._buf = bytearray()
        self._can_send = threading.Event()
        self._can_send.set()
        self.closed = threading.Event()

    # called by the connection's reader thread
    def on_okay(self) -> None:
        self._can_send.set()

    def on_write(self, data: bytes) -> None:
        self.inbound.put(data)

    def on_close(self) -> None:
        self.closed.set()
        self._can_send.set()
        self.inbound.put(None)

    # called by the service thread
    def send(self, data: bytes) -> None:
        """WRTE ``data`` in chunks of at most the negotiated max payload, one in flight at a time."""
        view = memoryview(data)
        while view:
            while not self._can_send.wait(0.5):
                if self.conn.dead.is_set():
                    raise StreamClosed()
            if self.closed.is_set():
                raise StreamClosed()
            chunk, view = view[: self.conn.max_payload], view[self.conn.max_payload :]
            self._can_send.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, bytes(chunk))

    def recv_chunk(self) -> bytes | None:
        """Next WRTE payload from the host (acknowledged with OKAY), or None once the stream is closed."""
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            return data
        data = self.inbound.get()
        if data is None:
            self.inbound.put(None)
            return None
        if not self.closed.is_set():
            self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return data

    def recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self.inbound.get()
            if data is None:
                self.inbound.put(None)
                raise StreamClosed()
            self._buf += data
            if not self.closed.is_set():
                self.conn.send(A_OKAY, self.local_id, self.remote_id)
        out, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return out

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.conn.forget(self)


# ----------------------------------------------------------------------------------------------- connection


class Connection:
    """One host (adb server) connected to the device over TCP."""

    def __init__(self, daemon: AdbDaemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.max_payload = 4096
        self.version = A_VERSION_MIN
        self.online = False
        self.dead = threading.Event()
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._token = b""
        self._host_banner = b""

    # -------------------------------------------------------------- io

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        msg = pack_message(command, arg0, arg1, data)
        with self._send_lock:
            try:
                self.sock.sendall(msg)
            except OSError:
                self.dead.set()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("host closed the connection")
            buf += chunk
        return bytes(buf)

    def read_message(self) -> tuple[int, int, int, bytes]:
        command, arg0, arg1, length, check, magic = HEADER.unpack(self._recv_exact(HEADER.size))
        if magic != command ^ 0xFFFFFFFF:
            raise ConnectionError(f"bad magic {magic:#x} for command {command:#x}")
        if length > max(self.max_payload, 1024 * 1024):
            raise ConnectionError(f"payload of {length} bytes exceeds the maximum")
        data = self._recv_exact(length) if length else b""
        if self.version < A_VERSION_SKIP_CHECKSUM and check != checksum(data):
            raise ConnectionError(f"checksum mismatch on {_NAMES.get(command, hex(command))}")
        return command, arg0, arg1, data

    def forget(self, stream: Stream) -> None:
        self._streams.pop(stream.local_id, None)

    # -------------------------------------------------------------- main loop

    def serve(self) -> None:
        try:
            while not self.daemon.stopping.is_set():
                command, arg0, arg1, data = self.read_message()
                self.dispatch(command, arg0, arg1, data)
        except (ConnectionError, OSError, struct.error):
            pass
        finally:
            self.dead.set()
            for stream in list(self._streams.values()):
                stream.on_close()
            try:
                self.sock.close()
            except OSError:
                pass

    def banner(self) -> bytes:
        keys = ("ro.product.name", "ro.product.model", "ro.product.device")
        props = ";".join(f"{k}={self.daemon.props.get(k, '')}" for k in keys)
        # No "features=" list: no shell_v2, cmd, stat_v2, ls_v2 ... so the client falls back to shell: and sync v1.
        return f"device::{props};".encode()

    def dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.version = min(arg0, A_VERSION)
            self.max_payload = min(arg1, MAX_PAYLOAD)
            self._host_banner = data
            self.online = False
            if self.daemon.require_auth:
                self._send_token()
            else:
                self._go_online()
        elif command == A_AUTH:
            self._on_auth(arg0, data)
        elif not self.online:
            return  # adbd ignores everything but CNXN/AUTH until the host is authorised
        elif command == A_OPEN:
            self._on_open(arg0, data)
        elif command in (A_OKAY, A_WRTE, A_CLSE):
            stream = self._streams.get(arg1)
            if stream is None or (arg0 and stream.remote_id != arg0):
                if command == A_WRTE:  # unknown stream: tell the host it is gone
                    self.send(A_CLSE, 0, arg0)
                return
            if command == A_OKAY:
                stream.on_okay()
            elif command == A_WRTE:
                stream.on_write(data)
            else:
                stream.on_close()
                self.forget(stream)

    # -------------------------------------------------------------- auth

    def _send_token(self) -> None:
        self._token = secrets.token_bytes(TOKEN_SIZE)
        self.send(A_AUTH, AUTH_TOKEN, 0, self._token)

    def _go_online(self) -> None:
        self.online = True
        self.send(A_CNXN, self.version, self.max_payload, self.banner())

    def _on_auth(self, kind: int, data: bytes) -> None:
        if self.online or not self.daemon.require_auth:
            return
        if kind == AUTH_SIGNATURE:
            for key in self.daemon.authorized_keys():
                if verify_token_signature(key, self._token, data):
                    self._go_online()
                    return
            self._send_token()  # ask for the next key
        elif kind == AUTH_RSAPUBLICKEY:
            # The phone would now show "Allow USB debugging?"; the stand-in records the key and waits.
            line = data.rstrip(b"\0").decode("ascii", "replace").strip()
            with self.daemon.lock:
                pending = self.daemon.pending_keys
                try:
                    old = pending.read_text() if pending.exists() else ""
                    if line not in old.splitlines() and len(old) < 1 << 20:
                        pending.write_text(old + line + "\n")
                except OSError:
                    pass  # nowhere to record it: the host stays unauthorised all the same

    # -------------------------------------------------------------- services

    def _on_open(self, remote_id: int, data: bytes) -> None:
        service = data.rstrip(b"\0").decode("utf-8", "replace")
        if service.startswith("shell:"):
            target = self.daemon.shell_service
            arg = service[len("shell:") :]
        elif service == "sync:":
            target = self.daemon.sync_service
            arg = ""
        else:  # unsupported service (exec:, shell,v2:, reboot: ...): refuse the OPEN
            self.send(A_CLSE, 0, remote_id)
            return
        local_id = self._next_id
        self._next_id += 1
        stream = Stream(self, local_id, remote_id)
        self._streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)
        threading.Thread(target=target, args=(stream, arg), daemon=True, name=f"adbd-{service[:20]}").start()


# ----------------------------------------------------------------------------------------------- sync backends


class SyncSink(Protocol):
    """Where the bytes of one ``SEND`` go."""

    def write(self, data: bytes) -> None:
        """Store the next ``DATA`` chunk (errors are remembered and reported by :meth:`finish`)."""

    def finish(self, mtime: int) -> str:
        """``DONE`` arrived: commit the file with ``mtime``; return "" or the error to send as ``FAIL``."""

    def abort(self) -> None:
        """The transfer broke off: discard what was written."""


class SyncSource(Protocol):
    """Where the bytes of one ``RECV`` come from."""

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, in chunks of at most :data:`SYNC_DATA_MAX`."""

    def error(self) -> str:
        """After :meth:`chunks` ran out: "" or why the file could not be read in full."""


class OutputFilter(Protocol):
    """Rewrites one shell command's output as it streams (:meth:`AdbDaemon.shell_filter`)."""

    def feed(self, data: bytes) -> bytes:
        """Bytes to send now for ``data`` (some may be held back until the next call)."""

    def flush(self) -> bytes:
        """Whatever is still held back, at the end of the output."""


class OpenFailed(Exception):
    """A sync path cannot be opened; the message is sent to the host as ``FAIL``."""


# ----------------------------------------------------------------------------------------------- the daemon


class AdbDaemon:
    """An adbd listening on ``host:port`` (port 0 picks a free one; see :attr:`port`).

    Subclasses provide the services: :meth:`shell_argv` (how ``shell:CMD`` runs), and the sync hooks
    :meth:`sync_stat`, :meth:`sync_list`, :meth:`sync_sink`, :meth:`sync_source`.

    Args:
        props: the device's properties (the CNXN banner names ``ro.product.name/model/device``).
        adb_keys: authorised host keys, one ``adbkey.pub`` line each (the phone's ``/data/misc/adb/adb_keys``).
        pending_keys: where keys offered with AUTH RSAPUBLICKEY and not accepted are recorded (the phone's
            "Allow USB debugging?" dialog).
        require_auth: demand RSA authentication like a real phone (off: any host that connects is online, like
            an emulator or a ``ro.adb.secure=0`` build).
    """

    def __init__(self, props: dict[str, str], adb_keys: Path, pending_keys: Path, *, host: str = "127.0.0.1",
                 port: int = 0, require_auth: bool = False) -> None:
        self.props = props
        self.adb_keys = adb_keys
        self.pending_keys = pending_keys
        self.require_auth = require_auth
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._connections: list[Connection] = []
        self._procs: set[subprocess.Popen] = set()
        self._thread: threading.Thread | None = None

    @property
    def serial(self) -> str:
        """The serial the adb server gives this device after ``adb connect``."""
        return f"{self.host}:{self.port}"

    def authorized_keys(self) -> list:
        """The RSA keys listed in :attr:`adb_keys` (unreadable lines are skipped)."""
        if not self.adb_keys.exists():
            return []
        keys = []
        for line in self.adb_keys.read_text().splitlines()[:1000]:
            if line.strip():
                try:
                    keys.append(parse_adb_public_key(line))
                except (ValueError, struct.error):
                    continue
        return keys

    # -------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Accept connections on a background thread; returns self."""
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="adbd")
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock)
            self._connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True, name="adbd-conn").start()

    def drop_connections(self) -> None:
        """Close every host connection (the cable is pulled); the listener stays up."""
        for conn in self._connections:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._connections.clear()

    def stop(self) -> None:
        """Stop listening, drop the hosts and kill every command still running."""
        self.stopping.set()
        self.drop_connections()
        try:
            self._listener.close()
        except OSError:
            pass
        for proc in list(self._procs):
            kill_group(proc)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- shell:

    def shell_argv(self, command: str) -> tuple[list[str], dict[str, object]]:
        """``(argv, Popen keyword arguments)`` that run ``command`` (an interactive shell when empty)."""
        raise NotImplementedError

    def shell_filter(self) -> OutputFilter | None:
        """A fresh rewriter for one command's output (None here: output is sent as the command wrote it)."""
        return None

    def shell_service(self, stream: Stream, command: str) -> None:
        """Legacy raw shell: run ``command`` with stdout+stderr on the stream; the host closing it hangs up."""
        argv, kwargs = self.shell_argv(command)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, **kwargs)  # type: ignore[call-overload]
        except OSError as exc:
            stream.send(f"/system/bin/sh: {exc}\n".encode())
            stream.close()
            return
        self._procs.add(proc)
        threading.Thread(target=_feed_stdin, args=(stream, proc), daemon=True, name="adbd-shell-stdin").start()
        try:
            self._pump_output(stream, proc, self.shell_filter())
        except StreamClosed:
            kill_group(proc)
        finally:
            self._procs.discard(proc)
            for f in (proc.stdout, proc.stdin):
                try:
                    f.close()
                except OSError:
                    pass
            stream.close()

    @staticmethod
    def _pump_output(stream: Stream, proc: subprocess.Popen, filt: OutputFilter | None) -> None:
        while True:
            data = proc.stdout.read1(max(1024, stream.conn.max_payload))
            if not data:
                break
            out = filt.feed(data) if filt is not None else data
            if out:
                stream.send(out)
        rest = filt.flush() if filt is not None else b""
        if rest:
            stream.send(rest)
        proc.wait()

    # -------------------------------------------------------------- sync:

    def sync_stat(self, path: str) -> tuple[int, int, int]:
        """``(mode, size, mtime)`` of ``path`` (lstat), zeros when it does not exist or may not be seen."""
        raise NotImplementedError

    def sync_list(self, path: str) -> Iterable[tuple[bytes, int, int, int]]:
        """``(name, mode, size, mtime)`` of the entries of directory ``path`` (nothing when it cannot be read)."""
        raise NotImplementedError

    def sync_sink(self, path: str, mode: int) -> SyncSink:
        """Open ``path`` for a SEND with permission bits ``mode``; raise :class:`OpenFailed` to refuse it."""
        raise NotImplementedError

    def sync_source(self, path: str) -> SyncSource:
        """Open ``path`` for a RECV; raise :class:`OpenFailed` to refuse it."""
        raise NotImplementedError

    def sync_service(self, stream: Stream, _arg: str) -> None:
        """Serve sync requests until QUIT, an error or the host closing the stream."""
        try:
            while self._sync_one(stream):
                pass
        except StreamClosed:
            pass
        finally:
            stream.close()

    def _sync_one(self, stream: Stream) -> bool:
        ident, length = struct.unpack("<4sI", stream.recv_exact(8))
        if ident == b"QUIT":
            return False
        if length > 1024:
            sync_fail(stream, "path too long")
            return False
        path = stream.recv_exact(length).decode("utf-8", "surrogateescape")
        if ident == b"STAT":
            stream.send(struct.pack("<4sIII", b"STAT", *self.sync_stat(path)))
        elif ident == b"LIST":
            out = bytearray()
            for name, mode, size, mtime in self.sync_list(path):
                out += struct.pack("<4sIIII", b"DENT", mode, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF, len(name)) + name
            stream.send(bytes(out) + struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0))
        elif ident == b"SEND":
            return self._sync_send(stream, path)
        elif ident == b"RECV":
            self._sync_recv(stream, path)
        else:
            sync_fail(stream, f"unknown sync request {ident!r}")
            return False
        return True

    def _sync_send(self, stream: Stream, spec: str) -> bool:
        path, _, mode_text = spec.rpartition(",")
        try:
            mode = int(mode_text) & 0o7777
        except ValueError:
            path, mode = spec, 0o644
        sink: SyncSink | None = None
        error = ""
        try:
            sink = self.sync_sink(path, mode)
        except OpenFailed as exc:
            error = str(exc)
        try:
            while True:  # keep reading DATA until DONE even after an error, as adbd does
                ident, arg = struct.unpack("<4sI", stream.recv_exact(8))
                if ident == b"DATA" and arg <= SYNC_DATA_MAX:
                    data = stream.recv_exact(arg)
                    if sink is not None:
                        sink.write(data)
                elif ident == b"DONE":
                    error = sink.finish(arg) if sink is not None else error
                    sink = None
                    break
                else:
                    why = "oversize data message" if ident == b"DATA" else f"invalid data message {ident!r}"
                    sync_fail(stream, why)
                    return False
        finally:
            if sink is not None:
                sink.abort()
        if error:
            sync_fail(stream, error)
        else:
            stream.send(struct.pack("<4sI", b"OKAY", 0))
        return True

    def _sync_recv(self, stream: Stream, path: str) -> None:
        try:
            source = self.sync_source(path)
        except OpenFailed as exc:
            sync_fail(stream, str(exc))
            return
        for data in source.chunks():
            stream.send(struct.pack("<4sI", b"DATA", len(data)) + data)
        error = source.error()
        if error:
            sync_fail(stream, error)
        else:
            stream.send(struct.pack("<4sI", b"DONE", 0))


def sync_fail(stream: Stream, message: str) -> None:
    """Send a sync ``FAIL`` with ``message`` (cut to 1000 bytes)."""
    msg = message.encode("utf-8", "replace")[:1000]
    stream.send(struct.pack("<4sI", b"FAIL", len(msg)) + msg)


def _feed_stdin(stream: Stream, proc: subprocess.Popen) -> None:
    """Copy the host's bytes to the command's stdin; when the host closes the stream, hang up like adbd does."""
    while True:
        data = stream.recv_chunk()
        if data is None:
            break
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            break
    if proc.poll() is None:
        kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it was started in a session of its own) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
