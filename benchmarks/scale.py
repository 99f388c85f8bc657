"""Scale-out figures (issue 13, issue 25 item 7): build speed-up on Ray, and parallel collection on a device farm.

1. Build: the demo config (``experiments/fashion-default.toml``) with K reference models (default 8), built
   serially (``--no-ray``) and on an embedded Ray with 1..W workers, each ``--repeats`` times; a table of wall
   seconds and speed-up (serial / Ray, paired by repetition). Target: >= 1.7x on 2 cores.
2. Device farm: N SSH devices (``tests/sshd_fixtures.start_sshd``, each in its own network namespace as root,
   on loopback otherwise; default 4) each behind 50 ms of added device -> host latency, collecting the target
   artifacts of a run: the demo's (``--run RUN``, e.g. the run ``compleak demo`` wrote), or the run built in part 1.
   Each repetition collects once sequentially (serial executor, in this process) and once in parallel (one Ray
   actor per device) on a fresh copy of the run (hard links; no outputs). For the parallel collect each repetition
   starts a fresh embedded Ray and the devices' collect actors, timed apart: Ray's start-up, then actor start-up
   (process start + the warm-up imports ``compleak audit`` runs during the build). Ratios, each per repetition:
     collect only      parallel collect / sequential collect          (actors started ahead, as in an audit)
     end to end        (actor start-up + parallel collect) / sequential collect                (the target's figure)
     with Ray start-up (Ray start-up + actor start-up + parallel collect) / sequential collect
   Target: parallel <= 0.4x sequential. The latency is ``tc qdisc ... netem delay 50ms`` inside each namespace
   where the kernel has ``sch_netem``, else the userspace delay line ``benchmarks/latency_proxy.py`` between the host
   and each sshd; the script prints which, and the added round-trip time it measured.

Every figure is printed as median [min, max] over the repetitions (default 3); fewer than 3 are refused except
with ``--smoke``, whose figures are labelled "not quotable". ``--json FILE`` writes every figure, each repetition,
the load average (the 1-minute value before and after each repetition), the date and the command line;
``--show FILE`` prints the figures of such a file again (docs quote them from benchmarks/results/).
Every build is a fresh ``compleak build`` process (imports and model training included), timed by wall clock.

    .venv/bin/python benchmarks/scale.py --farm-only --run runs/demo --devices 4 --json farm.json
    .venv/bin/python benchmarks/scale.py [--k 8] [--workers 1,2] [--devices 4] [--delay-ms 50] [--repeats 3]
    .venv/bin/python benchmarks/scale.py --smoke     # digits, K = 2, two torch variants: checks the script only
    .venv/bin/python benchmarks/scale.py --config experiments/fashion-findings.toml --k 4 --workers 2 --skip-farm
    .venv/bin/python benchmarks/scale.py --show benchmarks/results/farm.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the sshd fixture
sys.path.insert(0, str(ROOT / "benchmarks"))  # the latency proxy

QUOTABLE = 3  # the project's standard: a figure in the docs is a median of at least 3 runs, with min and max


def figure(values: list[float], digits: int = 3) -> dict:
    """Median, min, max and each value of one figure's repetitions."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "each": [round(v, digits) for v in values]}  # fmt: skip


def fmt(fig: dict, digits: int = 1, unit: str = "") -> str:
    """``median [min, max]unit``."""
    return f"{fig['median']:.{digits}f} [{fig['min']:.{digits}f}, {fig['max']:.{digits}f}]{unit}"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def source_state(root: Path, paths: tuple[str, ...]) -> dict:
    """The code measured: git HEAD, and the uncommitted changes under ``paths`` (file names and a digest of the
    diff), so a figure can be tied to the source it timed."""
    import hashlib

    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return r.stdout if r.returncode == 0 else ""

    diff = git("diff", "HEAD", "--", *paths)
    return {"head": git("rev-parse", "HEAD").strip() or None,
            "uncommitted": sorted(git("diff", "HEAD", "--name-only", "--", *paths).split()),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}  # fmt: skip


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
                       capture_output=True, text=True, env=env, check=False)  # fmt: skip
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"error: build {' '.join(extra)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return took


def bench_build(tmp: Path, k: int, workers: list[int], smoke: bool, config: Path | None, repeats: int
                ) -> tuple[Path, dict]:
    """Build serially and with each worker count, ``repeats`` times (a fresh output folder each time); returns the
    first serial run (the farm's run when no ``--run`` is given) and the figures."""
    cfg = tmp / "scale.toml"
    cfg.write_text(config_text(k, smoke, config))
    what = "smoke config (digits)" if smoke else (str(config) if config else "demo config")
    print(f"build: {what}, K = {k} reference models, {os.cpu_count()} CPUs, {repeats} repetition(s)", flush=True)
    serial: list[float] = []
    ray: dict[int, list[float]] = {w: [] for w in workers}
    loads: list[dict] = []
    for r in range(repeats):
        before = load1()
        out = tmp / ("serial" if r == 0 else f"serial-{r}")
        serial.append(timed_build(cfg, out, "--no-ray"))
        if r:
            shutil.rmtree(out, ignore_errors=True)
        for w in workers:
            out = tmp / f"ray-{w}-{r}"
            ray[w].append(timed_build(cfg, out, "--workers", str(w)))
            shutil.rmtree(out, ignore_errors=True)
        loads.append({"before": before, "after": load1()})
        print(f"  repetition {r + 1}: serial {serial[-1]:.1f} s"
              + "".join(f", {w} worker(s) {ray[w][-1]:.1f} s" for w in workers), flush=True)  # fmt: skip
    rows = [{"executor": "serial (--no-ray)", "workers": None, "seconds": figure(serial), "speedup": None}]
    for w in workers:
        rows.append({"executor": "embedded Ray", "workers": w, "seconds": figure(ray[w]),
                     "speedup": figure([s / t for s, t in zip(serial, ray[w])])})  # fmt: skip
    result = {"what": what, "k": k, "cpus": os.cpu_count(), "repeats": repeats, "quotable": not smoke and
              repeats >= QUOTABLE, "rows": rows, "load1": loads}  # fmt: skip
    print_build(result)
    return tmp / "serial", result


def print_build(b: dict) -> None:
    print(f"build: {b['what']}, K = {b['k']}, {b['cpus']} CPUs; median [min, max] of {b['repeats']} repetition(s)"
          + ("" if b["quotable"] else "  -- NOT A QUOTABLE FIGURE (smoke, or fewer than 3 repetitions)"))
    print(f"  {'executor':<20} {'workers':>7} {'seconds':>24} {'speed-up (serial / this)':>26}")
    for row in b["rows"]:
        x = fmt(row["speedup"], 2, "x") if row["speedup"] else "1"
        print(f"  {row['executor']:<20} {row['workers'] or '-':>7} {fmt(row['seconds']):>24} {x:>26}")


def _netem(server: object, delay_ms: int) -> str | None:
    """Add ``delay_ms`` of latency on the namespace side of the device's veth pair (every packet from the device);
    None when done, else why not."""
    ns = getattr(server, "netns", None)
    if ns is None:
        return "the device is not in a network namespace (needs root)"
    if shutil.which("tc") is None:
        return "no tc (apt-get install iproute2)"
    links = subprocess.run(["ip", "netns", "exec", ns.name, "ip", "-o", "link"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    ifaces = [ln.split(":")[1].strip().split("@")[0] for ln in links.stdout.splitlines() if ": lo:" not in ln]
    if not ifaces:
        return "no veth interface in the namespace"
    r = subprocess.run(["ip", "netns", "exec", ns.name, "tc", "qdisc", "add", "dev", ifaces[0], "root", "netem",
                        "delay", f"{delay_ms}ms"], capture_output=True, text=True, check=False)  # fmt: skip
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


def link_run(run: Path, dest: Path) -> None:
    """A fresh copy of ``run`` for one collect: its top-level files (manifest, splits, config, queries) and
    ``artifacts/`` (without the build caches), hard-linked where possible; no outputs, attacks or logs."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    dest.mkdir(parents=True)
    for p in run.iterdir():
        if p.is_file() and not p.is_symlink():
            link(str(p), str(dest / p.name))
    shutil.copytree(run / "artifacts", dest / "artifacts", copy_function=link,
                    ignore=shutil.ignore_patterns("*-cache", ".*"))  # fmt: skip


def bench_farm(run: Path, what: str, tmp: Path, n_devices: int, delay_ms: int, repeats: int, quotable: bool) -> dict:
    """Sequential vs parallel collect of ``run``'s target artifacts on ``n_devices`` SSH devices, each behind
    ``delay_ms`` of added device -> host latency: netem in the device's namespace where the kernel has it, else
    the userspace delay line of ``benchmarks/latency_proxy.py``. Each repetition: the sequential collect, then a
    fresh embedded Ray, the devices' collect actors started and warmed, and the parallel collect, each timed."""
    from latency_proxy import start_proxy
    from rich.console import Console
    from sshd_fixtures import start_sshd

    from devices.spec import DeviceSpec
    from harness.collect.fanout import AuditDevice, _warm_collect, collect_devices, prestart_collect_actors
    from harness.execution import ExecOptions, RayExecutor, SerialExecutor
    from rundir import RunDir

    records = RunDir(run).load_manifest().artifacts
    targets = [r for r in records if r.role == "target"]
    if not targets:
        raise SystemExit(f"error: {run}/manifest.json has no target artifacts to collect")
    servers, proxy = [], None
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {"sequential": [], "ray_start": [], "actor_start": [], "parallel": []}
    loads: list[dict] = []
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
        print(f"device farm: {n_devices} SSH devices, {what}: {len(targets)} target artifacts each; {repeats} "
              f"repetition(s)\n  added latency: {method}", flush=True)  # fmt: skip
        devices = [AuditDevice(DeviceSpec(u, identity=e[2], known_hosts=e[3])) for u, e in zip(uris, endpoints)]
        t = time.perf_counter()
        _warm_collect()  # the sequential side's imports, once per process (as the actors' warm-up)
        host_warm = time.perf_counter() - t
        with SerialExecutor() as serial:
            for r in range(repeats):
                before = load1()
                copy = tmp / f"farm-sequential-{r}"
                link_run(run, copy)
                t = time.perf_counter()
                collect_devices(copy, devices, serial, Console(quiet=True))
                times["sequential"].append(time.perf_counter() - t)
                shutil.rmtree(copy, ignore_errors=True)
                middle = load1()
                copy = tmp / f"farm-parallel-{r}"
                link_run(run, copy)
                with RayExecutor(ExecOptions(), None) as ray:
                    t = time.perf_counter()
                    ray.start()
                    times["ray_start"].append(time.perf_counter() - t)
                    # as `compleak audit` does during the build: each device's collect actor starts (process, imports)
                    t = time.perf_counter()
                    prestart_collect_actors(ray, devices)
                    ready = ray.wait_prestarted(timeout=600)
                    times["actor_start"].append(time.perf_counter() - t)
                    if ready != n_devices:
                        raise SystemExit(f"error: only {ready} of {n_devices} collect actors warmed within 600 s")
                    t = time.perf_counter()
                    collect_devices(copy, devices, ray, Console(quiet=True))
                    times["parallel"].append(time.perf_counter() - t)
                shutil.rmtree(copy, ignore_errors=True)
                loads.append({"before": before, "between": middle, "after": load1()})
                print(f"  repetition {r + 1}: sequential {times['sequential'][-1]:.1f} s; Ray start-up "
                      f"{times['ray_start'][-1]:.1f} s, actor start-up {times['actor_start'][-1]:.1f} s, parallel "
                      f"{times['parallel'][-1]:.1f} s; load {before:.1f} / {middle:.1f} / {load1():.1f}",
                      flush=True)  # fmt: skip
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for s in servers:
            s.close()
    seq, par, act, rs = times["sequential"], times["parallel"], times["actor_start"], times["ray_start"]
    result = {
        "run": what, "target_artifacts": len(targets), "devices": n_devices, "delay_ms": delay_ms, "method": method,
        "rtt_ms": {"direct": round(base[0], 1), "delayed": round(added[0], 1)},
        "exec_true_ms": {"direct": round(base[1], 1), "delayed": round(added[1], 1)},
        "repeats": repeats, "quotable": quotable and repeats >= QUOTABLE, "cpus": os.cpu_count(),
        "host_warmup_s": round(host_warm, 2),
        "seconds": {k: figure(v) for k, v in times.items()}
        | {"parallel_end_to_end": figure([a + p for a, p in zip(act, par)]),
           "parallel_with_ray_start": figure([x + a + p for x, a, p in zip(rs, act, par)])},
        "ratio": {"collect_only": figure([p / s for p, s in zip(par, seq)]),
                  "end_to_end": figure([(a + p) / s for a, p, s in zip(act, par, seq)]),
                  "with_ray_start": figure([(x + a + p) / s for x, a, p, s in zip(rs, act, par, seq)])},
        "target": "end_to_end <= 0.4",
        "load": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()],
                 "load1_per_repetition": loads},
    }  # fmt: skip
    print_farm(result)
    return result


def print_farm(f: dict) -> None:
    s, x = f["seconds"], f["ratio"]
    print(f"device farm: {f['devices']} SSH devices, {f['run']}, {f['target_artifacts']} target artifacts each; "
          f"median [min, max] of {f['repeats']} repetition(s)"
          + ("" if f["quotable"] else "  -- NOT A QUOTABLE FIGURE (smoke, or fewer than 3 repetitions)"))
    print(f"  added latency: {f['method']}")
    print(f"  SSH round trip (keepalive request): {f['rtt_ms']['direct']:.1f} ms direct, {f['rtt_ms']['delayed']:.1f}"
          f" ms with the added latency (+{f['rtt_ms']['delayed'] - f['rtt_ms']['direct']:.1f} ms)")  # fmt: skip
    print(f"  seconds:  sequential collect          {fmt(s['sequential'])}")
    print(f"            Ray start-up                {fmt(s['ray_start'])}")
    print(f"            actor start-up (+ warm-up)  {fmt(s['actor_start'])}")
    print(f"            parallel collect            {fmt(s['parallel'])}")
    print(f"            actor start-up + parallel   {fmt(s['parallel_end_to_end'])}")
    print(f"  parallel / sequential:  collect only {fmt(x['collect_only'], 2)};  end to end (actor start-up "
          f"included) {fmt(x['end_to_end'], 2)};  with Ray start-up too {fmt(x['with_ray_start'], 2)}  "
          f"(target {f['target']}: {'met' if x['end_to_end']['median'] <= 0.4 else 'NOT met'})")
    print(f"  (the sequential side's imports, once per process, not in the times: {f['host_warmup_s']:.1f} s)")
    ld = f["load"]
    print(f"  load average (1/5/15 min) at the start: {' '.join(f'{v:.2f}' for v in ld['start'])}, at the end: "
          f"{' '.join(f'{v:.2f}' for v in ld['end'])} ({f['cpus']} CPUs, shared with other jobs)")


def print_result(res: dict) -> None:
    print(f"{res['date']}  {res['command']}")
    if res.get("build"):
        print_build(res["build"])
    if res.get("farm"):
        print_farm(res["farm"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=None, help="reference models (default 8; 2 with --smoke)")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2,...,CPUs)")
    ap.add_argument("--devices", type=int, default=None, help="SSH devices of the farm (default 4; 2 with --smoke)")
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"repetitions of every timing (default {QUOTABLE}; 1 with --smoke); fewer than {QUOTABLE} "
                         "only with --smoke")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="a tiny digits config: checks the script, not the figures")
    ap.add_argument("--skip-farm", action="store_true")
    ap.add_argument("--farm-only", action="store_true", help="build the run serially only (no Ray build table)")
    ap.add_argument("--run", type=Path, default=None,
                    help="the farm collects this existing run's target artifacts (e.g. the demo's); no build")
    ap.add_argument("--config", type=Path, default=None,
                    help="experiment to build instead of the demo's (K replaces its reference_models / n_shadows)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument("--show", type=Path, default=None, help="print the figures of a --json file and exit")
    a = ap.parse_args()

    def stop(signum: int, _frame: object) -> None:  # clean up (sshd, namespaces, Ray) and say why, then exit
        raise SystemExit(f"error: {signal.Signals(signum).name} received; stopped")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    if a.show:
        print_result(json.loads(a.show.read_text()))
        return
    repeats = a.repeats if a.repeats is not None else (1 if a.smoke else QUOTABLE)
    if repeats < 1 or (repeats < QUOTABLE and not a.smoke):
        raise SystemExit(f"error: --repeats {repeats}: a figure needs at least {QUOTABLE} repetitions (median with "
                         "min and max); fewer only with --smoke, which checks the script")  # fmt: skip
    if a.run is not None:
        if a.skip_farm:
            raise SystemExit("error: --run is the farm's run; it excludes --skip-farm")
        if not (a.run / "manifest.json").is_file():
            raise SystemExit(f"error: {a.run}: no manifest.json; give a run directory (compleak build / demo)")
    k = a.k if a.k is not None else (2 if a.smoke else 8)
    cpus = os.cpu_count() or 1
    workers = [int(w) for w in a.workers.split(",")] if a.workers else list(range(1, cpus + 1))
    result: dict = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "command": " ".join(["benchmarks/scale.py", *sys.argv[1:]]),
                    "source": source_state(ROOT, ("compleak", "devices", "harness", "rundir")), "build": None,
                    "farm": None}
    with tempfile.TemporaryDirectory(prefix="compleak-bench-scale-") as d:
        tmp = Path(d)
        if a.run is not None:
            run, what = a.run.resolve(), f"run {a.run}"
        else:
            run, build = bench_build(tmp, k, [] if a.farm_only else workers, a.smoke, a.config,
                                     1 if a.farm_only else repeats)
            what = f"the {build['what']} built here, K = {k}"
            if not a.farm_only:
                result["build"] = build
        if not a.skip_farm:
            devices = a.devices if a.devices is not None else (2 if a.smoke else 4)
            result["farm"] = bench_farm(run, what, tmp, devices, a.delay_ms, repeats, not a.smoke)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"figures written to {a.json}")


if __name__ == "__main__":
    main()
