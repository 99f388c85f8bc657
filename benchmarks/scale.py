"""Scale-out figures (issue 13): build speed-up on Ray, and parallel collection on a device farm.

1. Build: the demo config (``experiments/fashion-default.toml``) with K reference models (default 8), built
   serially (``--no-ray``) and on an embedded Ray with 1..W workers; a table of wall seconds and speed-up.
   Target: >= 1.7x on 2 cores.
2. Device farm: four SSH devices (``tests/sshd_fixtures.start_sshd``, each in its own network namespace) each
   behind 50 ms of added latency (``tc qdisc ... netem delay 50ms`` inside the namespace), collecting the target
   artifacts of the run built in part 1: sequential (serial executor) versus parallel (one Ray actor per device).
   Target: parallel <= 0.4x sequential. Needs root (namespaces, tc); without it the farm part is skipped with a
   note.

Every build is a fresh ``compleak build`` process (imports and model training included), timed by wall clock.

    .venv/bin/python benchmarks/scale.py [--k 8] [--workers 1,2] [--devices 4] [--delay-ms 50]
    .venv/bin/python benchmarks/scale.py --smoke     # digits, K = 2, two torch variants: checks the script only
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the sshd fixture

SMOKE = """
[experiment]
name = "scale-smoke"
seed = 3
[data]
dataset = "digits"
[splits]
target_in = 150
target_out = 150
shadow_in = 150
shadow_out = 150
n_shadows = {k}
[model]
arch = "cnn-small"
[train]
epochs = 2
batch_size = 32
[compress]
finetune_epochs = 1
torch = ["original", "prune-0.5"]
[export]
frameworks = ["torch"]
torch_formats = ["onnx"]
"""


def config_text(k: int, smoke: bool) -> str:
    if smoke:
        return SMOKE.format(k=k)
    text = (ROOT / "experiments" / "fashion-default.toml").read_text()
    text, n = re.subn(r"(?m)^n_shadows\s*=\s*\d+", f"n_shadows = {k}", text)
    if n != 1:
        raise SystemExit("error: experiments/fashion-default.toml has no [splits] n_shadows line to set K")
    return text


def timed_build(cfg: Path, out: Path, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "harness.cli", "build", str(cfg), "--out", str(out), *extra],
                       capture_output=True, text=True, env=env)  # fmt: skip
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"error: build {' '.join(extra)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return took


def bench_build(tmp: Path, k: int, workers: list[int], smoke: bool) -> Path:
    cfg = tmp / "scale.toml"
    cfg.write_text(config_text(k, smoke))
    print(f"build: {'smoke config (digits)' if smoke else 'demo config'}, K = {k} reference models, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    serial_out = tmp / "serial"
    base = timed_build(cfg, serial_out, "--no-ray")
    rows = [("serial (--no-ray)", "-", base, 1.0)]
    for w in workers:
        took = timed_build(cfg, tmp / f"ray-{w}", "--workers", str(w))
        rows.append(("embedded Ray", str(w), took, base / took))
    print(f"{'executor':<20} {'workers':>7} {'seconds':>9} {'speed-up':>9}")
    for name, w, s, x in rows:
        print(f"{name:<20} {w:>7} {s:>9.1f} {x:>8.2f}x")
    return serial_out


def _netem(server: object, delay_ms: int) -> str | None:
    """Add ``delay_ms`` of latency on the namespace side of the device's veth pair (every packet from the device);
    None when done, else why not."""
    ns = getattr(server, "netns", None)
    if ns is None:
        return "the device is not in a network namespace"
    if shutil.which("tc") is None:
        return "no tc (apt-get install iproute2)"
    links = subprocess.run(["ip", "netns", "exec", ns.name, "ip", "-o", "link"], capture_output=True, text=True)
    ifaces = [ln.split(":")[1].strip().split("@")[0] for ln in links.stdout.splitlines() if ": lo:" not in ln]
    if not ifaces:
        return "no veth interface in the namespace"
    r = subprocess.run(["ip", "netns", "exec", ns.name, "tc", "qdisc", "add", "dev", ifaces[0], "root", "netem",
                        "delay", f"{delay_ms}ms"], capture_output=True, text=True)  # fmt: skip
    return None if r.returncode == 0 else f"tc netem: {r.stderr.strip()[:100]} (the kernel needs sch_netem)"


def bench_farm(run: Path, tmp: Path, n_devices: int, delay_ms: int) -> None:
    from rich.console import Console

    from harness.audit import AuditDevice, collect_devices
    from harness.execution import ExecOptions, RayExecutor, SerialExecutor
    from sshd_fixtures import start_sshd

    if os.geteuid() != 0:
        print("device farm: skipped (needs root for network namespaces and netem)")
        return
    servers = []
    try:
        why_not = None
        for i in range(n_devices):
            s = start_sshd(tmp / f"sshd{i}")
            servers.append(s)
            why_not = _netem(s, delay_ms) or why_not
        devices = [AuditDevice(s.uri, identity=s.identity, known_hosts=s.known_hosts) for s in servers]
        times = {}
        for name in ("sequential", "parallel"):
            copy = tmp / f"farm-{name}"
            shutil.copytree(run, copy)
            with (SerialExecutor() if name == "sequential" else RayExecutor(ExecOptions(), copy)) as ex:
                if isinstance(ex, RayExecutor):
                    ex.start()  # Ray's start-up is not part of the collect time (the audit's build started it)
                t = time.perf_counter()
                collect_devices(copy, devices, ex, Console(quiet=True))
                times[name] = time.perf_counter() - t
    finally:
        for s in servers:
            s.close()
    note = f"{delay_ms} ms netem latency each" if why_not is None else f"NO added latency: {why_not}"
    print(f"device farm: {n_devices} SSH devices ({note}), target artifacts of the run")
    print(f"{'collect':<12} {'seconds':>9}")
    for name, s in times.items():
        print(f"{name:<12} {s:>9.1f}")
    print(f"parallel / sequential = {times['parallel'] / times['sequential']:.2f} (target <= 0.4)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=None, help="reference models (default 8; 2 with --smoke)")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2,...,CPUs)")
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="a tiny digits config: checks the script, not the figures")
    ap.add_argument("--skip-farm", action="store_true")
    a = ap.parse_args()
    k = a.k if a.k is not None else (2 if a.smoke else 8)
    cpus = os.cpu_count() or 1
    workers = [int(w) for w in a.workers.split(",")] if a.workers else list(range(1, cpus + 1))
    with tempfile.TemporaryDirectory(prefix="compleak-bench-scale-") as d:
        tmp = Path(d)
        run = bench_build(tmp, k, workers, a.smoke)
        if not a.skip_farm:
            bench_farm(run, tmp, 2 if a.smoke else a.devices, a.delay_ms)


if __name__ == "__main__":
    main()
