"""What a phone-shaped device is: its names, properties, CPU description and the layout of its root file system.

Shared by the daemon (:mod:`devices.phone.device`, which serves the root file system) and the builder
(``harness/toolchain/phone.py``, which makes it from Debian packages). Phone-shaped, NOT Android: no bionic, no
SELinux, no seccomp, no ART/zygote; what it has is what a native program on a phone meets first — no glibc and no
dynamic loader, no Python, Android's shell (mksh) as ``/system/bin/sh``, the shell user (uid 2000) and
``/data/local/tmp`` as the one place that is both writable and executable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the shell user and group of Android (``AID_SHELL``)
SHELL_UID = 2000
SHELL_GID = 2000

#: the only folder writable AND executable for the shell user; ``SDCARD`` is writable but mounted noexec
DATA_LOCAL_TMP = "/data/local/tmp"
SDCARD = "/sdcard"

#: device files bound from the host into the root file system's ``/dev`` (empty files there are the mount points)
DEV_NODES = ("null", "zero", "random", "urandom")

#: CPU lists of ``/sys/devices/system/cpu`` (``0-7``), which XNNPACK's cpuinfo reads on arm64 (without them LiteRT
#: "cannot compile this model"); plain files of the root file system where the device has its own ``/proc/cpuinfo``,
#: else the host's, bound over empty files
SYS_CPU = "sys/devices/system/cpu"
SYS_CPU_LISTS = ("possible", "present", "online")

#: busybox applets NOT linked into ``/system/bin``: the shell is mksh, as on Android
SKIP_APPLETS = frozenset({"sh", "ash", "hush", "busybox"})

#: environment of every command on the device (a phone's adb shell: PATH is /system/bin, HOME and TMPDIR are
#: /data/local/tmp)
SHELL_ENV = {
    "PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin:/system/xbin:/odm/bin:/vendor/bin",
    "HOME": DATA_LOCAL_TMP,
    "TMPDIR": DATA_LOCAL_TMP,
    "ANDROID_DATA": "/data",
    "ANDROID_ROOT": "/system",
    "EXTERNAL_STORAGE": SDCARD,
    "SHELL": "/system/bin/sh",
    "USER": "shell",
    "LOGNAME": "shell",
}

#: mksh script installed as ``/system/bin/getprop``: ``getprop`` lists ``[key]: [value]``, ``getprop KEY [DEFAULT]``
#: prints one value (an empty line for an unknown key without default), as Android's getprop does
GETPROP = """#!/system/bin/sh
# getprop of the phone-shaped device: answers from /system/build.prop (not Android's property service)
f=/system/build.prop
if [ $# -eq 0 ]; then
  while IFS= read -r l; do
    case $l in ''|'#'*) ;; *=*) print -r -- "[${l%%=*}]: [${l#*=}]" ;; esac
  done < $f
  exit 0
fi
while IFS= read -r l; do
  case $l in "$1="*) print -r -- "${l#*=}"; exit 0 ;; esac
done < $f
print -r -- "${2-}"
"""


def _arm64_cpuinfo() -> str:
    """``/proc/cpuinfo`` of an 8-core big.LITTLE arm64 phone SoC (4 Cortex-A55 + 4 Cortex-A76), as Linux prints it:
    the half-precision features (``fphp asimdhp``) and dot product that phone runtimes look for are listed."""
    features = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                "asimddp")
    cores = [("0x1", "0xd05", "0")] * 4 + [("0x3", "0xd0b", "1")] * 4
    return "".join(
        f"processor\t: {i}\nBogoMIPS\t: 38.40\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {rev}\n\n"
        for i, (variant, part, rev) in enumerate(cores)
    )


@dataclass(frozen=True)
class PhoneKind:
    """One phone-shaped device: its name, Debian architecture, Android ABI and CPU."""

    name: str
    deb_arch: str  # Debian architecture of the packages its tools come from
    abi: str  # ro.product.cpu.abi
    qemu_cpu: str | None  # CPU qemu-user emulates (None: runs natively on an x86_64 host)
    cpuinfo: str | None  # mounted over /proc/cpuinfo (None: the host's)

    def cpu_list(self) -> str:
        """The ``/sys/devices/system/cpu`` lists of its own cpuinfo (``0-7``); "" when it shows the host's."""
        n = self.cpuinfo.count("processor\t:") if self.cpuinfo else 0
        return f"0-{n - 1}\n" if n else ""

    def props(self) -> dict[str, str]:
        """The device's ``build.prop`` (what ``getprop`` answers)."""
        return {
            "ro.product.model": f"CompLeak phone-shaped {self.abi}",
            "ro.product.name": f"compleak_{self.name.replace('-', '_')}",
            "ro.product.device": self.name,
            "ro.product.manufacturer": "compleak",
            "ro.product.brand": "compleak",
            "ro.build.version.sdk": "34",
            "ro.build.version.release": "14",
            "ro.build.type": "userdebug",
            "ro.build.characteristics": "phone-shaped,not-android",
            "ro.product.cpu.abi": self.abi,
            "ro.product.cpu.abilist": self.abi,
            "ro.product.cpu.abilist64": self.abi,
            "ro.board.platform": "compleak_phone",
            "ro.hardware": "compleak_phone",
            "ro.soc.manufacturer": "CompLeak",
            "ro.soc.model": f"phone-shaped-{self.abi}" + (f" (qemu {self.qemu_cpu})" if self.qemu_cpu else ""),
            "ro.adb.secure": "1",
            "sys.boot_completed": "1",
        }


PHONES: dict[str, PhoneKind] = {
    "phone-arm64": PhoneKind("phone-arm64", "arm64", "arm64-v8a", "cortex-a76", _arm64_cpuinfo()),
    "phone-x86_64": PhoneKind("phone-x86_64", "amd64", "x86_64", None, None),
}


def build_prop_text(props: dict[str, str]) -> str:
    """``key=value`` lines, sorted (the format of Android's ``/system/build.prop``)."""
    return "# phone-shaped device (compleak): not Android\n" + "".join(f"{k}={v}\n" for k, v in sorted(props.items()))


def read_build_prop(path: Path, limit: int = 1 << 16) -> dict[str, str]:
    """The ``key=value`` pairs of a build.prop file (first ``limit`` bytes; comments and junk lines skipped)."""
    props = {}
    for line in path.read_text(errors="replace")[:limit].splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            props[key.strip()] = value.strip()
    return props
