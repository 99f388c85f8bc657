"""Scale-out figures (issue 13): build speed-up on Ray, and parallel collection on a device farm.

1. Build: the demo config (``experiments/fashion-default.toml``) with K reference models (default 8), built
   serially (``--no-ray``) and on an embedded Ray with 1..W workers; a table of wall seconds and speed-up.
   Target: >= 1.7x on 2 cores.
2. Device farm: four SSH devices (``tests/sshd_fixtures.start_sshd``, each in its own network namespace as root,
   on loopback otherwise) each behind 50 ms of added device -> host latency, collecting the target artifacts of
   the run built in part 1: sequential (serial executor) versus parallel (one Ray actor per device, started
   ahead as ``compleak audit`` starts them during the build; their start-up is printed apart), the median of a
   few repetitions, with the load average. Target: parallel <= 0.4x sequential. The latency is
   ``tc qdisc ... netem delay 50ms`` inside each namespace where the kernel has ``sch_netem``, else the
   userspace delay line ``benchmarks/latency_proxy.py`` between the host and each sshd; the script prints which,
   and the added round-trip time it measured.

Every build is a fresh ``compleak build`` process (imports and model training included), timed by wall clock.

    .venv/bin/python benchmarks/scale.py [--k 8] [--workers 1,2] [--devices 4] [--delay-ms 50] [--repeats 3]
    .venv/bin/python benchmarks/scale.py --smoke --farm-only --devices 4 --repeats 3   # the farm figure only
    .venv/bin/python benchmarks/scale.py --smoke     # digits, K = 2, two torch variants: checks the script only
    .venv/bin/python benchmarks/scale.py --config experiments/fashion-findings.toml --k 4 --workers 2 --skip-farm
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the sshd fixture
sys.path.insert(0, str(ROOT / "benchmarks"))  # the latency proxy

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


def config_text(k: int, smoke: bool, config: Path | None = None) -> str:
    """The experiment to build: the smoke config, or ``config`` (default: the demo's) with K reference models
    (its ``reference_models`` or ``n_shadows`` line set to ``k``) and one seed (a ``seeds`` list is dropped)."""
    if smoke:
        return SMOKE.format(k=k)
    path = config or ROOT / "experiments" / "fashion-default.toml"
    text = re.sub(r"(?m)^seeds\s*=.*$", "", path.read_text())
    text, n = re.subn(r"(?m)^reference_models\s*=\s*\d+", f"reference_models = {k}", text)
    if n == 0:
        text, n = re.subn(r"(?m)^n_shadows\s*=\s*\d+", f"n_shadows = {k}", text)
    if n != 1:
        raise SystemExit(f"error: {path} has no single [attack] reference_models or [splits] n_shadows line to set K")
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


def bench_build(tmp: Path, k: int, workers: list[int], smoke: bool, config: Path | None = None) -> Path:
    cfg = tmp / "scale.toml"
    cfg.write_text(config_text(k, smoke, config))
    what = "smoke config (digits)" if smoke else (str(config) if config else "demo config")
    print(f"build: {what}, K = {k} reference models, {os.cpu_count()} CPUs")
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
        return "the device is not in a network namespace (needs root)"
    if shutil.which("tc") is None:
        return "no tc (apt-get install iproute2)"
    links = subprocess.run(["ip", "netns", "exec", ns.name, "ip", "-o", "link"], capture_output=True, text=True)
    ifaces = [ln.split(":")[1].strip().split("@")[0] for ln in links.stdout.splitlines() if ": lo:" not in ln]
    if not ifaces:
        return "no veth interface in the namespace"
    r = subprocess.run(["ip", "netns", "exec", ns.name, "tc", "qdisc", "add", "dev", ifaces[0], "root", "netem",
                        "delay", f"{delay_ms}ms"], capture_output=True, text=True)  # fmt: skip
    return None if r.returncode == 0 else f"tc netem: {r.stderr.strip()[:100]} (the kernel needs sch_netem)"


def _ssh_probe(host: str, port: int, identity: Path, known_hosts: Path, n: int = 5) -> tuple[float, float]:
    """Over one open paramiko connection: (median ms of an SSH-level ping, median ms of running ``true``).

    The ping is a ``keepalive@openssh.com`` global request with want-reply (sshd answers at once, no process is
    started): exactly one round trip. ``true`` is a channel open, an exec and the exit status (a few round trips
    plus the device's login shell)."""
    from devices.ssh import SshDevice

    dev = SshDevice(host, port, identity=identity, known_hosts=known_hosts)
    try:
        pings, execs = [], []
        for _ in range(n):
            pings.append(dev.ping() * 1000)
        for _ in range(n):
            t = time.perf_counter()
            dev.run(["true"], timeout=30)
            execs.append((time.perf_counter() - t) * 1000)
        return statistics.median(pings), statistics.median(execs)
    finally:
        dev.close()


def _probe(endpoints: list[tuple[str, int, Path, Path]]) -> tuple[float, float]:
    """(median round-trip ms, median ssh exec ms) over the devices' ``(host, port, identity, known_hosts)``."""
    probes = [_ssh_probe(*e) for e in endpoints]
    return statistics.median(p[0] for p in probes), statistics.median(p[1] for p in probes)


def bench_farm(run: Path, tmp: Path, n_devices: int, delay_ms: int, repeats: int) -> None:
    """Sequential vs parallel collect of ``run``'s target artifacts on ``n_devices`` SSH devices, each behind
    ``delay_ms`` of added device -> host latency: netem in the device's namespace where the kernel has it, else
    the userspace delay line of ``benchmarks/latency_proxy.py``. Prints the method, the measured added latency,
    per-repetition seconds, medians and the load average."""
    from latency_proxy import start_proxy
    from rich.console import Console
    from sshd_fixtures import start_sshd

    from devices.spec import DeviceSpec
    from harness.collect.fanout import AuditDevice, collect_devices, prestart_collect_actors
    from harness.execution import ExecOptions, RayExecutor, SerialExecutor

    servers, proxy = [], None
    load_before = os.getloadavg()
    try:
        for i in range(n_devices):
            servers.append(start_sshd(tmp / f"sshd{i}"))
        direct = [(s.host, s.port, s.identity, s.known_hosts) for s in servers]
        base = _probe(direct)
        why_not = _netem(servers[0], delay_ms)
        if why_not is None:
            for s in servers[1:]:
                if (err := _netem(s, delay_ms)) is not None:
                    raise SystemExit(f"error: netem worked on the first device but not on another: {err}")
            method, endpoints = f"tc netem delay {delay_ms}ms in each device's namespace", direct
            uris = [s.uri for s in servers]
        else:
            proxy, ports = start_proxy([(s.host, s.port) for s in servers], delay_ms)
            method = f"userspace delay line (benchmarks/latency_proxy.py), {delay_ms} ms device -> host; " \
                     f"no netem: {why_not}"  # fmt: skip
            endpoints, uris = [], []
            for s, port in zip(servers, ports):
                kh = s.workdir / "known_hosts-proxy"
                kh.write_text(f"[127.0.0.1]:{port} {s.host_key_line.split(' ', 1)[1]}\n")
                endpoints.append(("127.0.0.1", port, s.identity, kh))
                uris.append(s.uri.replace(f"@{s.host}:{s.port}?", f"@127.0.0.1:{port}?", 1))
        added = _probe(endpoints)
        print(f"device farm: {n_devices} SSH devices; added latency: {method}")
        print(f"  SSH round trip (keepalive request): {base[0]:.1f} ms direct, {added[0]:.1f} ms with the added "
              f"latency (+{added[0] - base[0]:.1f} ms)")  # fmt: skip
        print(f"  ssh exec of 'true' (open connection): {base[1]:.1f} ms direct, {added[1]:.1f} ms with it")
        devices = [AuditDevice(DeviceSpec(u, identity=e[2], known_hosts=e[3])) for u, e in zip(uris, endpoints)]
        times: dict[str, list[float]] = {"sequential": [], "parallel": []}
        with SerialExecutor() as serial, RayExecutor(ExecOptions(), None) as ray:
            ray.start()  # Ray's start-up is not part of the collect time (the audit's build started it)
            # as `compleak audit` does: the devices' collect actors start (process, imports) while the build runs
            t = time.perf_counter()
            prestart_collect_actors(ray, devices)
            ready = ray.wait_prestarted(timeout=600)
            warm_s = time.perf_counter() - t
            for r in range(repeats):
                for name, ex in (("sequential", serial), ("parallel", ray)):
                    copy = tmp / f"farm-{name}-{r}"
                    shutil.copytree(run, copy)
                    t = time.perf_counter()
                    collect_devices(copy, devices, ex, Console(quiet=True))
                    times[name].append(time.perf_counter() - t)
                    shutil.rmtree(copy, ignore_errors=True)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for s in servers:
            s.close()
    load_after = os.getloadavg()
    print(f"  {ready} collect actors started and warmed in {warm_s:.1f} s (in an audit: during the build; not in "
          "the times below)")
    print(f"  collect of the run's target artifacts, {repeats} repetition(s), seconds:")
    print(f"  {'collect':<12} {'median':>8}   each")
    for name, ts in times.items():
        print(f"  {name:<12} {statistics.median(ts):>8.1f}   {' '.join(f'{t:.1f}' for t in ts)}")
    ratio = statistics.median(times["parallel"]) / statistics.median(times["sequential"])
    print(f"  parallel / sequential (medians) = {ratio:.2f} (target <= 0.4)")
    print(f"  load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=None, help="reference models (default 8; 2 with --smoke)")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2,...,CPUs)")
    ap.add_argument("--devices", type=int, default=None, help="SSH devices of the farm (default 4; 2 with --smoke)")
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=None, help="farm repetitions (default 3; 1 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="a tiny digits config: checks the script, not the figures")
    ap.add_argument("--skip-farm", action="store_true")
    ap.add_argument("--farm-only", action="store_true", help="build the run serially only (no Ray build table)")
    ap.add_argument("--config", type=Path, default=None,
                    help="experiment to build instead of the demo's (K replaces its reference_models / n_shadows)")
    a = ap.parse_args()
    k = a.k if a.k is not None else (2 if a.smoke else 8)
    cpus = os.cpu_count() or 1
    workers = [int(w) for w in a.workers.split(",")] if a.workers else list(range(1, cpus + 1))
    with tempfile.TemporaryDirectory(prefix="compleak-bench-scale-") as d:
        tmp = Path(d)
        run = bench_build(tmp, k, [] if a.farm_only else workers, a.smoke, a.config)
        if not a.skip_farm:
            devices = a.devices if a.devices is not None else (2 if a.smoke else 4)
            repeats = a.repeats if a.repeats is not None else (1 if a.smoke else 3)
            bench_farm(run, tmp, devices, a.delay_ms, repeats)


if __name__ == "__main__":
    main()
