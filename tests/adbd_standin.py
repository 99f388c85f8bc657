"""A protocol-level stand-in for an Android phone's ``adbd``, for tests.

No Android system image (nor emulator) can be fetched on the machines that run this project's tests, so the
ADB transport is tested against this daemon instead: the REAL ``adb`` client and server (Debian's ``adb``)
``adb connect`` to it over loopback TCP and talk the real ADB wire protocol to it. It is not a phone: there is
no Android userland, no SELinux, no package manager. What it does implement, byte for byte as AOSP's
``protocol.txt`` / ``SERVICES.TXT`` / ``SYNC.TXT`` describe them:

* messages: 24-byte little-endian header ``command, arg0, arg1, data_length, data_check, magic`` with
  ``magic == command ^ 0xffffffff``; ``CNXN`` (version / max-payload negotiation and the device banner),
  ``AUTH`` (TOKEN / SIGNATURE / RSAPUBLICKEY, verified against an ``adb_keys`` file exactly as adbd does, so an
  unknown host key leaves the device "unauthorized"), ``OPEN``, ``OKAY`` (per-stream flow control: one ``WRTE``
  in flight per stream), ``WRTE``, ``CLSE``.
* services: ``shell:CMD`` (the legacy raw shell: stdout and stderr interleaved on one stream and no exit status,
  because the banner does not advertise ``shell_v2`` and the client falls back to it) and ``sync:`` with
  ``STAT`` (v1), ``LIST`` (v1), ``SEND`` (``DATA`` chunks, ``DONE`` with mtime), ``RECV`` and ``QUIT``.
  The banner advertises no feature flags, so the client uses only these.

The device's file system is a SANDBOX directory. Device paths under ``/data/local/tmp`` and ``/sdcard`` map to
``SANDBOX/data/local/tmp`` and ``SANDBOX/sdcard``; sync requests for any other path fail with "permission
denied", and sync paths that would resolve outside the sandbox are refused. Shell commands run with
``/bin/sh -c`` (standing in for Android's mksh) in ``SANDBOX/data/local/tmp`` with HOME and TMPDIR there, after
the device prefixes in the command line are rewritten to their sandbox folders. ``SANDBOX/system/bin`` is first
on the shell's PATH and holds a ``getprop`` that answers from the properties the fixture gives (model, SDK
level, ABI, SoC ...), and a ``python3`` that runs the host's Python (standing in for Termux's), so the
on-device Python runner works on this "phone".

Run it from a test with :class:`AdbdStandin` (a thread on 127.0.0.1), or by hand:
``python tests/adbd_standin.py --sandbox DIR --port 6520`` then ``adb connect 127.0.0.1:6520``.
"""

from __future__ import annotations

import argparse
import base64
import errno
import os
import posixpath
import queue
import secrets
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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

#: where the device-side prefixes live inside the sandbox
DEVICE_PREFIXES = ("/data/local/tmp", "/sdcard")

DEFAULT_PROPS = {
    "ro.product.model": "CompLeak Stand-in",
    "ro.product.name": "compleak_standin",
    "ro.product.device": "standin",
    "ro.product.manufacturer": "compleak-tests",
    "ro.build.version.sdk": "34",
    "ro.build.version.release": "14",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.board.platform": "standin",
    "ro.soc.manufacturer": "CompLeak",
    "ro.soc.model": "SM-STANDIN",
    "ro.hardware": "standin",
    "sys.boot_completed": "1",
}


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


# ----------------------------------------------------------------------------------------------- sandbox


@dataclass
class Sandbox:
    """The stand-in phone's file system and shell environment, all inside ``root``."""

    root: Path
    props: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROPS))
    python: str = sys.executable

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@")
        if not set(str(self.root)) <= safe:
            raise ValueError(f"sandbox path {self.root} must use only [A-Za-z0-9/._-+@] (it is spliced into commands)")
        for prefix in DEVICE_PREFIXES:
            self.host_dir(prefix).mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        (self.root / "data" / "misc" / "adb").mkdir(parents=True, exist_ok=True)
        self.write_props()
        self._write_tools()

    @property
    def bin(self) -> Path:
        return self.root / "system" / "bin"

    @property
    def props_file(self) -> Path:
        return self.root / "system" / "build.prop"

    @property
    def adb_keys(self) -> Path:
        """Authorised host keys, one ``adbkey.pub`` line each (the phone's ``/data/misc/adb/adb_keys``)."""
        return self.root / "data" / "misc" / "adb" / "adb_keys"

    @property
    def pending_keys(self) -> Path:
        """Host keys offered with AUTH RSAPUBLICKEY and not (yet) accepted: the phone's "Allow USB debugging?"."""
        return self.root / "data" / "misc" / "adb" / "pending_keys"

    def host_dir(self, device_prefix: str) -> Path:
        return self.root / device_prefix.lstrip("/")

    def write_props(self) -> None:
        self.props_file.parent.mkdir(parents=True, exist_ok=True)
        self.props_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(self.props.items())))

    def _write_tools(self) -> None:
        props = shlex.quote(str(self.props_file))
        getprop = f"""#!/bin/sh
# getprop of the adbd stand-in: reads {self.props_file.name}; no argument lists all as "[key]: [value]".
if [ $# -eq 0 ]; then
  awk '{{ i = index($0, "="); if (i) printf "[%s]: [%s]\\n", substr($0, 1, i - 1), substr($0, i + 1) }}' {props}
else
  awk -v k="$1" -v d="$2" '{{ i = index($0, "="); \
if (i && substr($0, 1, i - 1) == k) {{ v = substr($0, i + 1); f = 1 }} }}
    END {{ if (f) print v; else print d }}' {props}
fi
"""
        python = f"#!/bin/sh\nexec {shlex.quote(self.python)} \"$@\"\n"
        for name, text in (("getprop", getprop), ("python3", python)):
            path = self.bin / name
            path.write_text(text)
            path.chmod(0o755)

    # -------------------------------------------------------------- path mapping

    def map_path(self, device_path: str) -> Path | None:
        """Host path for a device path under one of :data:`DEVICE_PREFIXES`, else None (outside the sandbox)."""
        if not device_path.startswith("/"):
            return None
        norm = posixpath.normpath(device_path)
        for prefix in DEVICE_PREFIXES:
            if norm == prefix or norm.startswith(prefix + "/"):
                host = self.host_dir(prefix) / norm[len(prefix) :].lstrip("/")
                real = Path(os.path.realpath(host))
                if real != self.root and self.root not in real.parents:
                    return None  # a symlink inside the sandbox pointing out of it
                return host
        return None

    def map_command(self, command: str) -> str:
        """Rewrite device prefixes in a shell command line to their sandbox folders."""
        for prefix in DEVICE_PREFIXES:
            command = command.replace(prefix, str(self.host_dir(prefix)))
        return command

    def output_mapper(self) -> "OutputMapper":
        """Rewrites sandbox folders in shell output back to device paths (``mktemp``, ``pwd`` print them)."""
        return OutputMapper([(str(self.host_dir(p)).encode(), p.encode()) for p in DEVICE_PREFIXES])

    def shell_env(self) -> dict[str, str]:
        tmp = str(self.host_dir("/data/local/tmp"))
        return {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "ANDROID_DATA": str(self.root / "data"),
            "ANDROID_ROOT": str(self.root / "system"),
            "LANG": "C.UTF-8",
        }


class OutputMapper:
    """Streaming byte replacement that also catches a path split across two reads."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.pairs = sorted(pairs, key=lambda p: -len(p[0]))
        self.hold = max(len(a) for a, _ in pairs) - 1
        self.carry = b""

    def _replace(self, data: bytes) -> bytes:
        for host, device in self.pairs:
            data = data.replace(host, device)
        return data

    def feed(self, data: bytes) -> bytes:
        buf = self._replace(self.carry + data)
        cut = max(0, len(buf) - self.hold)
        self.carry = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        out, self.carry = self._replace(self.carry), b""
        return out


# ----------------------------------------------------------------------------------------------- streams


class StreamClosed(Exception):
    pass


class Stream:
    """One OPENed service stream: our id, the host's id, flow control and the inbound byte queue."""

    def __init__(self, conn: "Connection", local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbound: "queue.Queue[bytes | None]" = queue.Queue()
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

    def __init__(self, daemon: "AdbdStandin", sock: socket.socket) -> None:
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
        props = ";".join(f"{k}={self.daemon.sandbox.props.get(k, '')}" for k in keys)
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
                pending = self.daemon.sandbox.pending_keys
                old = pending.read_text() if pending.exists() else ""
                if line not in old.splitlines():
                    pending.write_text(old + line + "\n")

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


# ----------------------------------------------------------------------------------------------- the daemon


class AdbdStandin:
    """The stand-in device daemon listening on ``host:port`` (port 0 picks a free one; see :attr:`port`).

    Args:
        sandbox: the device's file system root on the host.
        props: getprop properties (defaults: :data:`DEFAULT_PROPS`).
        require_auth: demand RSA authentication like a real phone; host keys listed in
            ``sandbox.adb_keys`` are accepted, others are recorded in ``sandbox.pending_keys`` and left
            unauthorised.
    """

    def __init__(self, sandbox: Path, props: dict[str, str] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, require_auth: bool = False) -> None:
        self.sandbox = Sandbox(Path(sandbox), dict(DEFAULT_PROPS, **(props or {})))
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
        path = self.sandbox.adb_keys
        if not path.exists():
            return []
        keys = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    keys.append(parse_adb_public_key(line))
                except (ValueError, struct.error):
                    continue
        return keys

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "AdbdStandin":
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="adbd-standin")
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
        self.stopping.set()
        self.drop_connections()
        try:
            self._listener.close()
        except OSError:
            pass
        for proc in list(self._procs):
            _kill_group(proc)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "AdbdStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- shell:

    def shell_service(self, stream: Stream, command: str) -> None:
        """Legacy raw shell: run ``command`` (or an interactive sh) with stdout+stderr on the stream."""
        argv = ["/bin/sh", "-c", self.sandbox.map_command(command)] if command.strip() else ["/bin/sh"]
        try:
            proc = subprocess.Popen(argv, cwd=self.sandbox.host_dir("/data/local/tmp"), env=self.sandbox.shell_env(),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as exc:
            stream.send(f"/system/bin/sh: {exc}\n".encode())
            stream.close()
            return
        self._procs.add(proc)

        def feed_stdin() -> None:
            while True:
                data = stream.recv_chunk()
                if data is None:
                    break
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except (BrokenPipeError, ValueError, OSError):
                    break
            # the host closed the stream (adb client killed or finished): hang up like adbd does
            if proc.poll() is None:
                _kill_group(proc)

        threading.Thread(target=feed_stdin, daemon=True, name="adbd-shell-stdin").start()
        mapper = self.sandbox.output_mapper()
        try:
            while True:
                data = proc.stdout.read1(max(1024, stream.conn.max_payload))
                if not data:
                    break
                out = mapper.feed(data)
                if out:
                    stream.send(out)
            rest = mapper.flush()
            if rest:
                stream.send(rest)
            proc.wait()
        except StreamClosed:
            _kill_group(proc)
        finally:
            self._procs.discard(proc)
            for f in (proc.stdout, proc.stdin):
                try:
                    f.close()
                except OSError:
                    pass
            stream.close()

    # -------------------------------------------------------------- sync:

    def sync_service(self, stream: Stream, _arg: str) -> None:
        try:
            while True:
                ident, length = struct.unpack("<4sI", stream.recv_exact(8))
                if ident == b"QUIT":
                    break
                if length > 1024:
                    self._sync_fail(stream, "path too long")
                    break
                path = stream.recv_exact(length).decode("utf-8", "surrogateescape")
                if ident == b"STAT":
                    self._sync_stat(stream, path)
                elif ident == b"LIST":
                    self._sync_list(stream, path)
                elif ident == b"SEND":
                    if not self._sync_send(stream, path):
                        break
                elif ident == b"RECV":
                    self._sync_recv(stream, path)
                else:
                    self._sync_fail(stream, f"unknown sync request {ident!r}")
                    break
        except StreamClosed:
            pass
        finally:
            stream.close()

    @staticmethod
    def _sync_fail(stream: Stream, message: str) -> None:
        msg = message.encode()
        stream.send(struct.pack("<4sI", b"FAIL", len(msg)) + msg)

    def _sync_stat(self, stream: Stream, path: str) -> None:
        host = self.sandbox.map_path(path)
        mode = size = mtime = 0
        if host is not None:
            try:
                st = os.lstat(host)
                mode, size, mtime = st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)
            except OSError:
                pass
        stream.send(struct.pack("<4sIII", b"STAT", mode, size, mtime))

    def _sync_list(self, stream: Stream, path: str) -> None:
        host = self.sandbox.map_path(path)
        out = bytearray()
        if host is not None and host.is_dir():
            for name in sorted(os.listdir(host)):
                try:
                    st = os.lstat(host / name)
                except OSError:
                    continue
                raw = name.encode("utf-8", "surrogateescape")
                out += struct.pack("<4sIIII", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw))
                out += raw
        out += struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0)
        stream.send(bytes(out))

    def _sync_send(self, stream: Stream, spec: str) -> bool:
        path, _, mode_text = spec.rpartition(",")
        try:
            mode = int(mode_text)
        except ValueError:
            path, mode = spec, 0o644
        host = self.sandbox.map_path(path)
        tmp: Path | None = None
        fh = None
        error = ""
        if host is None:
            error = f"remote path {path!r}: permission denied (outside the stand-in's /data/local/tmp and /sdcard)"
        else:
            try:
                host.parent.mkdir(parents=True, exist_ok=True)
                tmp = host.with_name(f".{host.name}.{secrets.token_hex(4)}.part")
                fh = open(tmp, "wb")
            except OSError as exc:
                error = f"couldn't create file: {exc.strerror}"
        try:
            while True:  # keep reading DATA until DONE even after an error, as adbd does
                ident, arg = struct.unpack("<4sI", stream.recv_exact(8))
                if ident == b"DATA":
                    if arg > SYNC_DATA_MAX:
                        self._sync_fail(stream, "oversize data message")
                        return False
                    data = stream.recv_exact(arg)
                    if fh is not None:
                        fh.write(data)
                elif ident == b"DONE":
                    if fh is not None:
                        fh.close()
                        fh = None
                        os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
                        os.utime(tmp, (arg, arg))
                        os.replace(tmp, host)
                        tmp = None
                    break
                else:
                    self._sync_fail(stream, f"invalid data message {ident!r}")
                    return False
        finally:
            if fh is not None:
                fh.close()
            if tmp is not None and tmp.exists():
                tmp.unlink()
        if error:
            self._sync_fail(stream, error)
        else:
            stream.send(struct.pack("<4sI", b"OKAY", 0))
        return True

    def _sync_recv(self, stream: Stream, path: str) -> None:
        host = self.sandbox.map_path(path)
        if host is None:
            self._sync_fail(stream, f"remote object {path!r}: permission denied (outside the stand-in's sandbox)")
            return
        try:
            fh = open(host, "rb")
        except OSError as exc:
            self._sync_fail(stream, os.strerror(exc.errno or errno.EIO))
            return
        with fh:
            while True:
                data = fh.read(SYNC_DATA_MAX)
                if not data:
                    break
                stream.send(struct.pack("<4sI", b"DATA", len(data)) + data)
        stream.send(struct.pack("<4sI", b"DONE", 0))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sandbox", type=Path, required=True, help="folder standing for the device's file system")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--prop", action="append", default=[], metavar="KEY=VALUE", help="override a getprop property")
    ap.add_argument(
        "--require-auth", action="store_true", help="demand a host key listed in SANDBOX/data/misc/adb/adb_keys"
    )
    args = ap.parse_args(argv)
    props = dict(p.split("=", 1) for p in args.prop)
    daemon = AdbdStandin(args.sandbox, props, port=args.port, require_auth=args.require_auth).start()
    print(f"adbd stand-in listening on {daemon.serial}; adb connect {daemon.serial}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
