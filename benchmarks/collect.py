"""Collect-stage overhead: 20k queries through cnn-small TF-Lite on `local` and on a loopback SSH device.

Prints collected outputs/s of ``collect_run`` (everything: connect, device probe, sha256 check, starting the
device's runner server, pushing the model, streaming the queries, receiving outputs, atomic writes) against a raw
in-process ``Interpreter.invoke`` loop over the same queries with the same batch size and runtime.
Targets: harness time <= 1.2x raw on local, <= 1.5x raw over SSH. The native row (issue 14) runs the same
collect on `local` through ``compleak-runner`` (LiteRT's C API; the bundle is built or reused first) and compares
it with the same raw loop; target <= 1.1x, judged on ``(raw + harness overhead) / raw`` where the overhead is the
collect's wall time minus the invoke time the native runner measured (robust to load noise in the invoke time).

    .venv/bin/python benchmarks/collect.py [--queries 20000] [--batch-size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the sshd fixture

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

from devices.spec import DeviceSpec  # noqa: E402
from rundir import (  # noqa: E402
    ArtifactRecord,
    Manifest,
    RunDir,
    Splits,
    TensorSpec,
    sha256_file,  # noqa: E402
)


def make_run(root: Path, n: int) -> tuple[RunDir, np.ndarray]:
    """A run with one cnn-small TF-Lite target artifact and ``n`` stored query inputs (28x28x1)."""
    import tensorflow as tf

    from devices.ondevice.compleak_runner import describe
    from harness.build.tf_pipeline import build_model

    rd = RunDir(root)
    rd.artifacts_dir.mkdir(parents=True)
    model = build_model("cnn-small", (28, 28, 1), 10)
    path = rd.artifacts_dir / "tf-target-original.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    desc = describe(path)
    rec = ArtifactRecord(
        id=path.name, role="target", variant="original", framework="tf", format="tflite",
        path=f"artifacts/{path.name}", sha256=sha256_file(path), bytes=path.stat().st_size,
        inputs=[TensorSpec(**t) for t in desc["inputs"]], outputs=[TensorSpec(**t) for t in desc["outputs"]],
    )
    Manifest(artifacts=[rec]).save(rd.manifest)
    ids = np.arange(n, dtype=np.int64)
    Splits(np.zeros(n, np.int64), ids[: n // 2], ids[n // 2 :]).save(rd.splits)
    x = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)
    np.savez(rd.root / "queries.npz", index=ids, x=x)
    return rd, x


def raw_loop(model_path: Path, x: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Seconds for a plain Interpreter.invoke loop over ``x`` in batches of ``batch`` (same runtime as the runner)."""
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    it = Interpreter(model_path=str(model_path))
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    out, size = [], None
    for s in range(0, len(x), batch):
        xb = x[s : s + batch]
        if len(xb) != size:
            it.resize_tensor_input(d["index"], list(xb.shape))
            it.allocate_tensors()
            size = len(xb)
        it.set_tensor(d["index"], xb)
        it.invoke()
        out.append(it.get_tensor(o["index"]).copy())
    return time.perf_counter() - t0, np.concatenate(out)


def timed_collect(rd: RunDir, device: DeviceSpec | str, batch: int) -> tuple[float, dict[str, float]]:
    """Wall seconds of one full collect_run, and where they went (from the provenance it wrote)."""
    import json

    from harness.collect.stage import collect_run

    shutil.rmtree(rd.root / "outputs", ignore_errors=True)
    t0 = time.perf_counter()
    collect_run(rd.root, device, batch_size=batch, console=Console(quiet=True))
    wall = time.perf_counter() - t0
    prov_file = next((rd.root / "outputs").glob("*/*.json"))
    chunks = json.loads(prov_file.read_text())["chunks"]
    total = lambda key: float(sum(c.get(key) or 0.0 for c in chunks))  # noqa: E731
    parts = {
        "runtime invoke": total("invoke_seconds"),
        "runner start-up not hidden (interpreter, imports) + model load": total("startup_wait_seconds")
        + total("load_seconds"),
        "query stream and replies beyond invoke (protocol, copies)": total("command_seconds")
        - total("invoke_seconds") - total("startup_wait_seconds") - total("load_seconds"),
        "transfers (model up; archives in and out where files are used)": total("upload_seconds")
        + total("download_seconds"),
    }
    parts["host side (connect, probe, query inputs, sha256, workspace, writes)"] = wall - sum(parts.values())
    return wall, parts


def native_collect(rd: RunDir, batch: int, bundle: Path) -> tuple[float, dict[str, float]]:
    """``timed_collect`` on local through the native runner (``--runner native --bundle BUNDLE``)."""
    return timed_collect(rd, DeviceSpec("local", runner="native", bundle=bundle), batch)


def _median_run(runs: list[tuple[float, dict[str, float]]]) -> tuple[float, dict[str, float]]:
    """The run with the median wall time (the lower middle one for an even count), with its breakdown."""
    ordered = sorted(runs, key=lambda r: r[0])
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="median of N for every measurement (interleaved)")
    args = ap.parse_args()
    n, batch = args.queries, args.batch_size
    console = Console()
    with tempfile.TemporaryDirectory(prefix="compleak-bench-") as tmp:
        rd, x = make_run(Path(tmp) / "run", n)
        model_path = rd.artifacts_dir / "tf-target-original.tflite"
        reference = raw_loop(model_path, x, batch)[1]  # warm-up, and the values every collect must reproduce

        from sshd_fixtures import start_sshd

        server = start_sshd(Path(tmp) / "sshd", netns=False)  # loopback
        ssh_device = DeviceSpec(server.uri, identity=server.identity, known_hosts=server.known_hosts)
        from devices.native.bundle import BundleError, build_bundle

        try:
            bundle: Path | None = build_bundle(log=lambda m: console.print(f"  native runner: {m}", style="dim"))
        except BundleError as exc:
            console.print(f"  native runner skipped: {exc}", markup=False)
            bundle = None
        raws, locals_, sshs, natives = [], [], [], []
        try:
            for _ in range(args.repeats):  # interleaved, so a burst of load on the shared machine hits all three
                raws.append(raw_loop(model_path, x, batch)[0])
                locals_.append(timed_collect(rd, "local", batch))
                got = rd.load_outputs("local", model_path.name).values
                assert np.allclose(got, reference, atol=1e-5), "local outputs differ from the raw loop"
                sshs.append(timed_collect(rd, ssh_device, batch))
                got = rd.load_outputs(server.device_id, model_path.name).values
                assert np.allclose(got, reference, atol=1e-5), "ssh outputs differ from the raw loop"
                if bundle is not None:
                    natives.append(native_collect(rd, batch, bundle))
        finally:
            server.close()
        raw = float(np.median(raws))
        local, local_parts = _median_run(locals_)
        ssh, ssh_parts = _median_run(sshs)
        rows = [("collect on local", local, local_parts, 1.2), ("collect on ssh (loopback)", ssh, ssh_parts, 1.5)]
        if natives:
            native, native_parts = _median_run(natives)
            rows.append(("native runner on local", native, native_parts, 1.1))

    console.print(f"[bold]collect benchmark[/]: {n} queries, cnn-small 28x28x1 TF-Lite (ai_edge_litert), "
                  f"batch {batch}, "
                  f"median of {args.repeats}, {os.cpu_count()} CPUs (load avg {os.getloadavg()[0]:.1f})",
                  soft_wrap=True)
    console.print(f"  raw Interpreter.invoke loop : {raw:7.2f} s  {n / raw:9.0f} outputs/s", soft_wrap=True)
    for name, secs, parts, target in rows:
        ratio = secs / raw
        verdict = "[green]ok[/]" if ratio <= target else "[red]over target[/]"
        console.print(f"  {name:<28}: {secs:7.2f} s  {n / secs:9.0f} outputs/s  {ratio:5.2f}x raw "
                      f"(target <= {target}x) {verdict}", soft_wrap=True)
        for part, value in parts.items():
            console.print(f"      {value:6.2f} s  {part}", soft_wrap=True)
        overhead = secs - parts["runtime invoke"]
        norm = (raw + overhead) / raw
        console.print(f"      harness overhead {overhead:.2f} s -> (raw + overhead) / raw = {norm:.2f}x "
                      f"(robust to load noise in the invoke time)"
                      + (f" {'[green]ok[/]' if norm <= target else '[red]over target[/]'}"
                         if name.startswith("native") else ""), soft_wrap=True)


if __name__ == "__main__":
    main()
