"""A protocol-level stand-in for an Android phone's ``adbd``, for tests: the product's adbd protocol
(:mod:`devices.phone.adbd`) with services that run on THIS host in a sandbox folder.

No Android system image (nor emulator) can be fetched on the machines that run this project's tests, so the
ADB transport is tested against this daemon instead: the REAL ``adb`` client and server (Debian's ``adb``)
``adb connect`` to it over loopback TCP and talk the real ADB wire protocol to it. It is not a phone: there is
no Android userland, no SELinux, no package manager. The wire protocol it speaks (messages, AUTH against
``adb_keys``, ``shell:`` and ``sync:``) is the product's, described in :mod:`devices.phone.adbd`.

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
import errno
import os
import posixpath
import secrets
import shlex
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root, when run as a script

from devices.phone.adbd import (
    A_AUTH,
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_SYNC,
    A_VERSION,
    A_WRTE,
    MAX_PAYLOAD,
    SYNC_DATA_MAX,
    AdbDaemon,
    OpenFailed,
    checksum,
    pack_message,
    parse_adb_public_key,
    verify_token_signature,
)

__all__ = ["A_AUTH", "A_CLSE", "A_CNXN", "A_OKAY", "A_OPEN", "A_SYNC", "A_VERSION", "A_WRTE", "MAX_PAYLOAD",
           "AdbdStandin", "Sandbox", "checksum", "pack_message", "parse_adb_public_key", "verify_token_signature"]



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

    def output_mapper(self) -> OutputMapper:
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




# ----------------------------------------------------------------------------------------------- sync on the host


class _FileSink:
    """A SEND into a sandbox file: written to a hidden part file, renamed into place on DONE."""

    def __init__(self, host: Path, mode: int) -> None:
        self.host, self.mode = host, mode
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = host.with_name(f".{host.name}.{secrets.token_hex(4)}.part")
            self.fh = open(self.tmp, "wb")  # noqa: SIM115 (held open across DATA chunks)
        except OSError as exc:
            raise OpenFailed(f"couldn't create file: {exc.strerror}") from None

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def finish(self, mtime: int) -> str:
        self.fh.close()
        os.chmod(self.tmp, stat.S_IMODE(self.mode) or 0o644)
        os.utime(self.tmp, (mtime, mtime))
        os.replace(self.tmp, self.host)
        return ""

    def abort(self) -> None:
        self.fh.close()
        if self.tmp.exists():
            self.tmp.unlink()


class _FileSource:
    """A RECV from a sandbox file."""

    def __init__(self, host: Path) -> None:
        try:
            self.fh = open(host, "rb")  # noqa: SIM115 (closed by chunks())
        except OSError as exc:
            raise OpenFailed(os.strerror(exc.errno or errno.EIO)) from None

    def chunks(self) -> Iterator[bytes]:
        with self.fh:
            while data := self.fh.read(SYNC_DATA_MAX):
                yield data

    def error(self) -> str:
        return ""


# ----------------------------------------------------------------------------------------------- the daemon


class AdbdStandin(AdbDaemon):
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
        super().__init__(self.sandbox.props, self.sandbox.adb_keys, self.sandbox.pending_keys, host=host, port=port,
                         require_auth=require_auth)
        self._mapper: OutputMapper | None = None

    def shell_argv(self, command: str) -> tuple[list[str], dict[str, object]]:
        """The host's ``/bin/sh`` in the sandbox's /data/local/tmp, device prefixes rewritten to sandbox folders."""
        argv = ["/bin/sh", "-c", self.sandbox.map_command(command)] if command.strip() else ["/bin/sh"]
        return argv, {"cwd": self.sandbox.host_dir("/data/local/tmp"), "env": self.sandbox.shell_env()}

    def shell_filter(self) -> OutputMapper:
        """Sandbox folders in the output (``mktemp``, ``pwd`` print them) mapped back to device paths."""
        return self.sandbox.output_mapper()

    def sync_stat(self, path: str) -> tuple[int, int, int]:
        host = self.sandbox.map_path(path)
        if host is not None:
            try:
                st = os.lstat(host)
                return st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)
            except OSError:
                pass
        return 0, 0, 0

    def sync_list(self, path: str) -> Iterable[tuple[bytes, int, int, int]]:
        host = self.sandbox.map_path(path)
        if host is None or not host.is_dir():
            return []
        out = []
        for name in sorted(os.listdir(host)):
            try:
                st = os.lstat(host / name)
            except OSError:
                continue
            out.append((name.encode("utf-8", "surrogateescape"), st.st_mode, st.st_size, int(st.st_mtime)))
        return out

    def sync_sink(self, path: str, mode: int) -> _FileSink:
        host = self.sandbox.map_path(path)
        if host is None:
            raise OpenFailed(f"remote path {path!r}: permission denied (outside the stand-in's /data/local/tmp "
                             f"and /sdcard)")
        return _FileSink(host, mode)

    def sync_source(self, path: str) -> _FileSource:
        host = self.sandbox.map_path(path)
        if host is None:
            raise OpenFailed(f"remote object {path!r}: permission denied (outside the stand-in's sandbox)")
        return _FileSource(host)


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in by hand until Ctrl-C."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
