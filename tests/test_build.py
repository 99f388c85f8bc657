"""The build stage: run-directory layout, resume after an interruption, cache keys, --force, one-line CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import TINY_TOML
from rich.console import Console

from rundir import RunDir, sha256_file

SMALL = """
[experiment]
name = "small"
seed = 3
[data]
dataset = "digits"
[splits]
target_in = 200
target_out = 200
shadow_in = 200
shadow_out = 200
[train]
epochs = 1
batch_size = 64
[compress]
finetune_epochs = 1
finetune_lr = {lr}
tf = {variants}
[export]
frameworks = ["tf"]
"""


def _write(tmp: Path, lr: float = 1e-4, variants: str = '["original", "prune-0.5", "dynamic-int8"]') -> Path:
    p = tmp / "small.toml"
    p.write_text(SMALL.format(lr=lr, variants=variants))
    return p


def _state(run: RunDir) -> dict[str, tuple[int, str]]:
    return {
        a.id: (run.artifact_path(a).stat().st_mtime_ns, sha256_file(run.artifact_path(a)))
        for a in run.load_manifest().artifacts
    }


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_interrupted_build_resumes_without_redoing_finished_artifacts(tmp_path: Path) -> None:
    from harness.build.stage import build_into, build_run
    from harness.config import load_experiment

    cfg = _write(tmp_path)
    exp = load_experiment(cfg)
    out = tmp_path / "run"
    seen: list[str] = []

    def stop_after_two(rec) -> None:
        seen.append(rec.id)
        if len(seen) == 2:
            raise Interrupt("simulated crash after two artifacts")

    with pytest.raises(Interrupt):
        build_into(exp, cfg.read_bytes(), out, console=Console(quiet=True), on_artifact=stop_after_two)
    run = RunDir(out)
    first = _state(run)
    assert sorted(first) == sorted(seen) == ["tf-target-original.tflite", "tf-target-prune-0.5.tflite"]
    splits_mtime = run.splits.stat().st_mtime_ns

    rep = build_into(exp, cfg.read_bytes(), out, console=Console(quiet=True))
    assert sorted(rep.skipped) == sorted(seen)
    assert len(rep.built) == 4
    second = _state(run)
    assert {k: second[k] for k in first} == first  # finished artifacts untouched (mtime and sha256)
    assert run.splits.stat().st_mtime_ns == splits_mtime
    assert [a.id for a in run.load_manifest().artifacts] == [
        f"tf-{tag}-{v}.tflite" for tag in ("target", "shadow0") for v in ("original", "prune-0.5", "dynamic-int8")
    ]

    # a complete run is a no-op
    assert build_run(cfg, out=out, console=Console(quiet=True)) == out
    assert _state(run) == second

    # a changed fine-tuning rate rebuilds exactly the fine-tuned variants
    cfg2 = _write(tmp_path, lr=3e-4)
    rep = build_into(load_experiment(cfg2), cfg2.read_bytes(), out, console=Console(quiet=True))
    assert sorted(rep.built) == ["tf-shadow0-prune-0.5.tflite", "tf-target-prune-0.5.tflite"]
    assert (out / "experiment.toml").read_bytes() == cfg2.read_bytes()
    third = _state(run)
    assert third["tf-target-original.tflite"] == second["tf-target-original.tflite"]

    # a variant dropped from the config leaves the manifest and the folder
    cfg3 = _write(tmp_path, lr=3e-4, variants='["original", "prune-0.5"]')
    rep = build_into(load_experiment(cfg3), cfg3.read_bytes(), out, console=Console(quiet=True))
    assert rep.built == [] and sorted(rep.removed) == [
        "tf-shadow0-dynamic-int8.tflite",
        "tf-target-dynamic-int8.tflite",
    ]
    assert not (out / "artifacts" / "tf-target-dynamic-int8.tflite").exists()

    # a damaged artifact file is rebuilt, nothing else
    victim = out / "artifacts" / "tf-shadow0-original.tflite"
    victim.write_bytes(b"garbage")
    rep = build_into(load_experiment(cfg3), cfg3.read_bytes(), out, console=Console(quiet=True))
    assert rep.built == ["tf-shadow0-original.tflite"]
    assert sha256_file(victim) == run.load_manifest().by_id("tf-shadow0-original.tflite").sha256

    # --force rebuilds everything, including the trained model cache
    cached = sorted((out / "artifacts" / "tf-cache").glob("tf-target-original-*.keras"))
    assert len(cached) == 1
    before = cached[0].stat().st_mtime_ns
    rep = build_into(load_experiment(cfg3), cfg3.read_bytes(), out, force=True, console=Console(quiet=True))
    assert len(rep.built) == 4 and rep.skipped == []
    assert cached[0].stat().st_mtime_ns != before


@pytest.mark.slow
def test_tiny_run_layout(tiny_run: Path) -> None:
    """The fixture's run directory honours the contract: every planned artifact, hashed, evaluated on the host."""
    from harness.build.stage import plan
    from harness.config import load_experiment

    run = RunDir(tiny_run)
    assert run.experiment.read_bytes() == TINY_TOML.read_bytes()
    exp = load_experiment(run.experiment)
    splits = run.load_splits()
    assert [
        len(splits.target_in), len(splits.target_out), len(splits.shadow_in[0]), len(splits.shadow_out[0])
    ] == [300] * 4
    m = run.load_manifest()
    planned, not_produced = plan(exp)
    assert [a.id for a in m.artifacts] == [p.id for p in planned]
    assert {a.framework for a in m.artifacts} == set(exp.export.frameworks)
    for a in m.artifacts:
        f = run.artifact_path(a)
        assert f.is_file() and f.stat().st_size == a.bytes and sha256_file(f) == a.sha256
        assert a.id == f.name == (
            f"{a.framework}-{'target' if a.role == 'target' else f'shadow{a.shadow}'}-{a.variant}.{a.format}"
        )
        assert 0.0 <= a.host_accuracy["train"] <= 1.0 and 0.0 <= a.host_accuracy["test"] <= 1.0
        assert a.inputs and a.outputs and a.toolchain["python"]
    originals = [a for a in m.artifacts if a.variant == "original"]
    assert all(a.host_accuracy["train"] > 0.5 for a in originals)  # a trained model, not chance (0.1)
    # shadows never train on target ids
    target = np.concatenate([splits.target_in, splits.target_out])
    assert not np.intersect1d(target, np.concatenate([splits.shadow_in[0], splits.shadow_out[0]])).size


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


BAD_CONFIGS = {
    "unknown-key": ("[train]\nepoch = 3\n", ["[train.epoch]", "unknown key", "epochs"]),
    "bad-variant": ('[compress]\ntf = ["prune-1.5"]\n', ["compress.tf", "prune-S (0<S<1)"]),
    "tf-only-step-for-torch": ('[compress]\ntorch = ["fp16"]\n', ["compress", "only for tf"]),
    "bad-dataset": ('[data]\ndataset = "mnist"\n', ["data.dataset", "allowed: fashion-mnist"]),
    "bad-arch": ('[model]\narch = "resnet50"\n', ["model.arch", "cnn-small"]),
    "not-toml": ("[train\n", ["not valid TOML"]),
    "too-small": ('[data]\ndataset = "digits"\n[splits]\ntarget_in = 1500\n', ["1797 examples", "splits.target_in"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_error(case: str, tmp_path: Path) -> None:
    text, needles = BAD_CONFIGS[case]
    cfg = tmp_path / f"{case}.toml"
    cfg.write_text(text)
    r = _cli("build", str(cfg), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_bad_data_paths_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    cfg = tmp_path / "f.toml"
    cfg.write_text('[data]\ndataset = "fashion-mnist"\n')
    r = _cli("build", str(cfg), "--data-dir", str(missing), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(missing) in r.stderr and "--data-dir" in r.stderr

    cfg.write_text(f'[data]\ndataset = "npz:{missing}/mine.npz"\n')
    r = _cli("build", str(cfg), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{missing}/mine.npz" in r.stderr and "'x'" in r.stderr

    bad = tmp_path / "cifar"
    (bad / "cifar-10-batches-py").mkdir(parents=True)
    (bad / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    cfg.write_text('[data]\ndataset = "cifar10"\n')
    r = _cli("build", str(cfg), "--data-dir", str(bad), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "data_batch_1" in r.stderr and "re-extract" in r.stderr

    r = _cli("build", str(tmp_path / "absent.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "absent.toml" in r.stderr and "not found" in r.stderr
