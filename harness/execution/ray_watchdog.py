"""The watchdog of an embedded Ray instance: ``python -m harness.execution.ray_watchdog ROOT INSTANCE``.

Started by :class:`harness.execution.ray_guard.EmbeddedRayGuard` in its own session with a pipe on stdin. It reads
until the pipe closes -- the driver closed the instance, or died (SIGTERM, SIGKILL, a crash) -- then stops every
process of this user whose environment carries ``COMPLEAK_RAY_INSTANCE=INSTANCE`` (SIGTERM, then SIGKILL after two
seconds) and removes ``ROOT``, the instance's private folder. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

MARKER_ENV = "COMPLEAK_RAY_INSTANCE"  # harness.execution.ray_guard.MARKER_ENV (kept import-free here)


def instance_pids(instance: str) -> list[int]:
    """Pids of this user's processes whose environment holds ``MARKER_ENV=instance`` (this process excluded)."""
    needle = f"{MARKER_ENV}={instance}".encode()
    me, uid = os.getpid(), os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read(1 << 20)
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def sweep(instance: str, grace_s: float = 2.0) -> int:
    """Stop the instance's processes; returns how many there were."""
    pids = instance_pids(instance)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and instance_pids(instance):
            time.sleep(0.1)
        pids = instance_pids(instance)
        if not pids:
            break
    return len(pids)


def main(argv: list[str]) -> int:
    root, instance = Path(argv[1]), argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver; the pipe tells this process
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    sweep(instance)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
