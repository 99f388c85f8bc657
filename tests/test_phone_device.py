"""The phone-shaped device (issue 21): ``compleak devices up phone-x86_64 | phone-arm64`` behind the REAL adb.

No mocks: the root file system is built from Debian packages (``apt-get download mksh busybox-static``, unpacked with
``dpkg-deb -x``) into a private cache folder, the project's adbd (devices/phone) is started detached by the real CLI
and serves it in its own namespaces as uid 2000 (arm64 through qemu-user), and the real Debian ``adb`` client and
server (a private server: own port and HOME, killed in teardown) talk to it. Phone-shaped, not Android.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sshd_fixtures import free_port  # noqa: E402

from devices.phone.layout import PHONES  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.toolchain.phone_rootfs import fetch_deb, is_static_elf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPLEAK = ROOT / ".venv" / "bin" / "compleak"
ADB = shutil.which("adb")
pytestmark = [pytest.mark.timeout(600)]


def _missing(kind: str) -> str | None:
    """Why this host cannot run phone ``kind`` (names the package to install), or None."""
    if ADB is None:
        return "the adb client is not installed (apt install adb)"
    if os.geteuid() != 0:
        return "a phone-shaped device needs root (mounts, chroot, uid 2000)"
    for tool, package in (("unshare", "util-linux"), ("dpkg-deb", "dpkg"), ("apt-get", "apt")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt install {package})"
    if PHONES[kind].deb_arch == "arm64" and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "arm64 needs qemu-aarch64 in binfmt_misc (apt install qemu-user-static binfmt-support)"
    return None


class Cli:
    """The real ``compleak`` CLI and a private adb server, sharing one environment (cache folder, adb port)."""

    def __init__(self, home: Path, cache: Path) -> None:
        self.env = dict(os.environ, HOME=str(home), ANDROID_ADB_SERVER_PORT=str(free_port()),
                        COMPLEAK_CACHE_DIR=str(cache))
        self.env.pop("ADB_SERVER_SOCKET", None)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(COMPLEAK), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def adb(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADB, *args], env=self.env, capture_output=True, text=True, timeout=timeout)


class Phone:
    """One phone-shaped device brought up by ``compleak devices up``."""

    def __init__(self, kind: str, cli: Cli, up: subprocess.CompletedProcess[str]) -> None:
        self.kind, self.cli, self.up = kind, cli, up
        self.uri = up.stdout.strip().splitlines()[-1]
        self.serial = self.uri.removeprefix("adb://")
        self.folder = Path(cli.env["COMPLEAK_CACHE_DIR"]) / "phones" / kind

    def sh(self, command: str) -> str:
        """Run ``command`` on the device; its output (stdout and stderr, the legacy shell mixes them)."""
        cp = self.cli.adb("-s", self.serial, "shell", command)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    cli = Cli(tmp_path_factory.mktemp("adbhome"), tmp_path_factory.mktemp("cache"))
    yield cli
    if ADB is not None:
        cli.adb("kill-server")


@pytest.fixture(scope="module", params=["phone-x86_64", "phone-arm64"])
def phone(request, cli):
    why = _missing(request.param)
    if why:
        pytest.skip(why)
    up = cli.run("devices", "up", request.param)
    if up.returncode != 0 and "missing Debian package" in up.stderr:
        pytest.skip(up.stderr.strip())
    assert up.returncode == 0, up.stderr
    phone = Phone(request.param, cli, up)
    yield phone
    cli.run("devices", "down", request.param)


def _pid(phone: Phone) -> int:
    return int(json.loads((phone.folder / "adbd.pid").read_text())["pid"])


def test_up_prints_an_adb_uri_of_a_connected_device(phone):
    assert re.fullmatch(r"adb://127\.0\.0\.1:\d+", phone.uri), phone.up.stdout
    assert Path(f"/proc/{_pid(phone)}").exists()
    state = phone.cli.adb("-s", phone.serial, "get-state")
    assert state.stdout.strip() == "device", state.stderr
    again = phone.cli.run("devices", "up", phone.kind)  # idempotent: the running device, same URI
    assert again.returncode == 0 and again.stdout.strip() == phone.uri, again.stderr


def test_shell_is_mksh_as_uid_2000(phone):
    out = phone.sh("id; echo \"$KSH_VERSION\"; echo $HOME; pwd")
    assert "uid=2000 gid=2000" in out and "uid=0" not in out, out
    assert "MIRBSD KSH" in out, out
    assert out.splitlines()[-2:] == ["/data/local/tmp", "/data/local/tmp"], out


def test_getprop_and_cpu(phone):
    abi = PHONES[phone.kind].abi
    assert phone.sh("getprop ro.product.cpu.abi").strip() == abi
    assert phone.sh("getprop ro.product.cpu.abilist").strip() == abi
    assert phone.sh("getprop no.such.prop fallback").strip() == "fallback"
    assert f"[ro.product.cpu.abi]: [{abi}]" in phone.sh("getprop")
    machine = phone.sh("uname -m").strip()
    if phone.kind == "phone-arm64":
        assert machine == "aarch64"
        features = phone.sh("grep -m1 Features /proc/cpuinfo")
        assert "fphp" in features.split() and "asimdhp" in features.split(), features
    else:
        assert machine == "x86_64"


def test_writes_only_to_data_local_tmp_and_sdcard(phone):
    for path in ("/system/x", "/data/x", "/x", "/system/bin/getprop", "/data/misc/adb/adb_keys"):
        out = phone.sh(f"echo x > {path}; echo rc=$?")
        assert "rc=0" not in out, (path, out)
    for path in ("/data/local/tmp/w", "/sdcard/w"):
        out = phone.sh(f"echo hi > {path} && cat {path}; echo rc=$?")
        assert out.split() == ["hi", "rc=0"], (path, out)
    assert "rc=0" not in phone.sh("mkdir /data/local/x; echo rc=$?")


def test_exec_from_data_local_tmp_only(phone):
    script = "printf '#!/system/bin/sh\\necho ran-$1\\n' > {d}/s.sh; chmod 755 {d}/s.sh; {d}/s.sh ok; echo rc=$?"
    assert phone.sh(script.format(d="/data/local/tmp")).split() == ["ran-ok", "rc=0"]
    out = phone.sh(script.format(d="/sdcard"))
    assert "ran-ok" not in out and "rc=126" in out, out
    # a static program (busybox, through qemu-user on arm64) copied in runs from /data/local/tmp, not from /sdcard
    assert phone.sh("cp /system/bin/busybox /data/local/tmp/echo && /data/local/tmp/echo native").strip() == "native"
    out = phone.sh("cp /system/bin/busybox /sdcard/echo && /sdcard/echo native; echo rc=$?")
    assert "rc=126" in out, out


def test_no_glibc_no_loader_no_python(phone):
    out = phone.sh("ls /lib/ld-linux* /lib64/ld-linux* /lib/ld-musl* /system/bin/linker* 2>/dev/null; "
                   "command -v python3 python perl; echo end")
    assert out.split() == ["end"], out
    root = phone.folder / "root"
    writable = (root / "data", root / "sdcard")  # what the tests themselves wrote there is not the image
    shipped = [p for p in root.rglob("*") if not any(p.is_relative_to(w) for w in writable)]
    names = [p.name for p in shipped]
    assert not [n for n in names if n.startswith(("ld-linux", "libc.so", "ld-musl", "python"))], names
    programs = [p for p in shipped if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"]
    assert {p.name for p in programs} == {"sh", "busybox"}, programs
    assert all(is_static_elf(p) for p in programs)


def test_push_pull_round_trip(phone, tmp_path):
    src = tmp_path / "model weights.bin"
    src.write_bytes(os.urandom(300_000) + b"end")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    remote = "/data/local/tmp/dir one/model weights.bin"
    push = phone.cli.adb("-s", phone.serial, "push", str(src), remote)
    assert push.returncode == 0, push.stderr
    assert phone.sh(f"sha256sum '{remote}'").split()[0] == digest
    assert "2000" in phone.sh(f"ls -ln '{remote}'").split()[2:4]  # owned by the shell user
    back = tmp_path / "back.bin"
    pull = phone.cli.adb("-s", phone.serial, "pull", remote, str(back))
    assert pull.returncode == 0, pull.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    refused = phone.cli.adb("-s", phone.serial, "push", str(src), "/system/w.bin")
    assert refused.returncode != 0 and "Read-only file system" in refused.stdout + refused.stderr, refused
    missing = phone.cli.adb("-s", phone.serial, "pull", "/data/local/tmp/nope", str(tmp_path / "n"))
    assert missing.returncode != 0 and not (tmp_path / "n").exists()


def test_probe_reports_abi_no_python_not_glibc(phone):
    table = phone.cli.run("devices", "probe", phone.uri)
    assert table.returncode == 0, table.stderr
    rows = {}
    for line in table.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    assert rows["Android ABI"] == PHONES[phone.kind].abi, table.stdout
    assert rows["Python"] == "none (binary runners only)", table.stdout
    assert rows.get("C library") not in ("gnu", "musl"), table.stdout
    js = json.loads(phone.cli.run("devices", "probe", phone.uri, "--json").stdout)
    assert js["android_abi"] == PHONES[phone.kind].abi and not js["python"]
    assert js["libc"] not in ("gnu", "musl"), js
    assert js["arch"] == ("aarch64" if phone.kind == "phone-arm64" else "x86_64")


def test_only_the_authorised_adb_key_gets_in(phone, tmp_path):
    """RSA auth is on: `devices up` made the adb server's key (adb keygen in the fresh HOME) and authorised it;
    an adb server signing with another key sees the device as `unauthorized` and gets no shell."""
    assert phone.sh("getprop ro.adb.secure").strip() == "1"
    pub = Path(phone.cli.env["HOME"]) / ".android" / "adbkey.pub"
    authorised = (phone.folder / "root" / "data" / "misc" / "adb" / "adb_keys").read_text().split()
    assert pub.read_text().split()[0] in authorised
    other = dict(phone.cli.env, HOME=str(tmp_path / "other"), ANDROID_ADB_SERVER_PORT=str(free_port()))
    (tmp_path / "other").mkdir()

    def adb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADB, *args], env=other, capture_output=True, text=True, timeout=60)

    try:
        adb("connect", phone.serial)
        listed = ""
        end = time.monotonic() + 20
        while time.monotonic() < end and "unauthorized" not in listed:
            listed = adb("devices").stdout
            time.sleep(0.3)
        assert f"{phone.serial}\tunauthorized" in listed, listed
        refused = adb("-s", phone.serial, "shell", "echo in")
        assert refused.returncode != 0 and "in" not in refused.stdout.split(), refused
        stranger = (tmp_path / "other" / ".android" / "adbkey.pub").read_text().split()[0]
        assert stranger not in authorised
        assert stranger in (phone.folder / "pending_keys").read_text()  # offered, not accepted
    finally:
        adb("kill-server")
    assert phone.sh("echo still").strip() == "still"  # the authorised server is unaffected


def _descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process below ``pid`` (scanning /proc)."""
    parent, state = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            parent[int(entry.name)], state[int(entry.name)] = int(fields[1]), fields[0]
    found, todo = [], [pid]
    while todo:
        kids = [p for p, pp in parent.items() if pp == todo[-1]]
        todo.pop()
        found += [(k, state[k]) for k in kids]
        todo += kids
    return found


def test_orphans_inside_the_device_are_reaped(phone):
    """A process orphaned inside the device (its shell exited first) is reaped by the device's PID 1, not left as
    a zombie."""
    assert phone.sh("(sleep 1 &); echo started").strip() == "started"
    time.sleep(4)  # the orphan's second has passed: it exited, and its parent is now the device's PID 1
    zombies = [p for p, st in _descendants(_pid(phone)) if st == "Z"]
    assert not zombies, zombies
    assert phone.sh("echo alive").strip() == "alive"


def test_down_stops_it_and_leaves_no_process(phone):
    pid = _pid(phone)
    port = int(phone.serial.rsplit(":", 1)[1])
    down = phone.cli.run("devices", "down", phone.kind)
    assert down.returncode == 0, down.stderr
    end = time.monotonic() + 10
    while time.monotonic() < end and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    root = str(phone.folder / "root")
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and root in _cmdline(p)]
    assert not left, left
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert not (phone.folder / "adbd.pid").exists()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ bad input


def _one_line_error(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in cp.stderr, cp.stderr
    return lines[0]


def test_bad_input_is_one_line(tmp_path):
    if COMPLEAK.exists() is False:
        pytest.skip("the project's .venv is not set up (bash scripts/setup.sh)")
    cli = Cli(tmp_path / "home", tmp_path / "cache")
    assert "unknown phone-shaped device 'phone-riscv'" in _one_line_error(cli.run("devices", "up", "phone-riscv"))
    assert "unknown phone-shaped device" in _one_line_error(cli.run("devices", "down", "phone-nope"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line_error(cli.run("devices", "up", "phone-x86_64", "--port", str(port)))
    assert f"port {port}" in line and "not available" in line, line
    assert "do not apply" in _one_line_error(cli.run("devices", "up", "phone-x86_64", "--runtime", "numpy"))
    assert not (tmp_path / "cache" / "phones" / "phone-x86_64" / "root").exists()  # refused before building


def test_missing_debian_package_is_one_line(tmp_path):
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is missing (a Debian host: apt)")
    with pytest.raises(HarnessError) as err:
        fetch_deb("compleak-no-such-package", "amd64", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "missing Debian package compleak-no-such-package:amd64" in msg, msg
