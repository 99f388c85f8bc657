"""SAMIA's perturbed queries at collect time: shape, determinism, equality with the model run in-process, resume.

The run is test_collect's small digits run (TF-Lite target original + int8, one shadow), collected on ``local``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_fixtures import TreeState, cli_refuses
from rich.console import Console
from test_collect import make_run

from devices.ondevice import compleak_runner as cr
from harness.collect.perturb import Perturbation, perturbation_noise, perturbed_ids, perturbed_inputs, perturbed_npz
from harness.collect.stage import collect_run
from rundir import RunDir

P = 3


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("samia-tpl") / "run").root


@pytest.fixture
def run(template: Path, tmp_path: Path) -> RunDir:
    shutil.copytree(template, tmp_path / "run")
    return RunDir(tmp_path / "run")


def quiet() -> Console:
    return Console(quiet=True)


def _inputs(rd: RunDir, ids: np.ndarray) -> np.ndarray:
    from harness.config import load_experiment
    from harness.data import load_dataset, query_inputs

    return query_inputs(load_dataset("digits"), load_experiment(rd.experiment).data.preprocess, ids)


def test_noise_is_a_deterministic_function_of_seed_id_epsilon_and_count() -> None:
    ids = np.array([5, 17, 3, 900], np.int64)
    p = Perturbation(count=4, epsilon=0.1, seed=11)
    a = perturbation_noise(ids, (8, 8, 1), p)
    assert a.shape == (4, 4, 8, 8, 1) and a.dtype == np.float32
    assert np.array_equal(a, perturbation_noise(ids, (8, 8, 1), p))  # same seed: identical
    # independent of order and chunking: each row depends on its own id only
    assert np.array_equal(perturbation_noise(ids[::-1], (8, 8, 1), p), a[::-1])
    assert np.array_equal(perturbation_noise(ids[2:3], (8, 8, 1), p), a[2:3])
    # the first P' copies of a larger P are those of P'
    assert np.array_equal(perturbation_noise(ids, (8, 8, 1), Perturbation(2, 0.1, 11)), a[:, :2])
    assert not np.array_equal(perturbation_noise(ids, (8, 8, 1), Perturbation(4, 0.1, 12)), a)  # another seed
    assert np.allclose(perturbation_noise(ids, (8, 8, 1), Perturbation(4, 0.2, 11)), 2 * a, atol=1e-6)
    big = perturbation_noise(np.arange(200), (8, 8, 1), Perturbation(8, 0.05, 0))
    assert abs(float(big.std()) - 0.05) < 0.005 and abs(float(big.mean())) < 0.005
    x = np.ones((4, 8, 8, 1), np.float32)
    assert np.array_equal(perturbed_inputs(x, ids, p), x[:, None] + a)


def test_perturbed_outputs_match_the_model_on_perturbed_inputs(run: RunDir) -> None:
    collect_run(run.root, "local", batch_size=40, chunk_size=60, console=quiet(), perturbations=P)
    splits, manifest = run.load_splits(), run.load_manifest()
    p = Perturbation(P, 0.05, 0)  # defaults of [attack]: samia_epsilon 0.05, seed 0
    for rec in manifest.artifacts:
        ids = perturbed_ids(splits, rec)
        assert ids is not None
        expected_ids = splits.query_ids("target") if rec.role == "target" else splits.query_ids("shadow", 0)
        assert np.array_equal(ids, expected_ids)
        path = perturbed_npz(run, "local", rec.id)
        with np.load(path, allow_pickle=False) as z:
            index, logits, eps = z["index"], z["logits"], float(z["epsilon"])
        plain = run.load_outputs("local", rec.id)
        assert index.dtype == np.int64 and np.array_equal(index, ids)
        assert logits.dtype == np.float32 and logits.shape == (len(ids), P, plain.values.shape[1])
        assert eps == 0.05
        x = perturbed_inputs(_inputs(run, ids), ids, p)
        model = cr.load_model(str(run.artifact_path(rec)))
        expected = model.predict(x.reshape(-1, *x.shape[2:])).reshape(len(ids), P, -1)
        np.testing.assert_allclose(logits, expected, atol=1e-6)
        assert not np.allclose(logits, plain.rows(ids)[:, None, :])  # the perturbation changed the outputs
        prov = json.loads(path.with_suffix(".json").read_text())
        assert prov["artifact"]["sha256"] == rec.sha256 and prov["device"]["id"] == "local"
        assert prov["perturbation"]["count"] == P and prov["perturbation"]["seed"] == 0
        assert prov["n_queries"] == len(ids) * P and sum(prov["examples_per_batch"]) == len(ids) * P
        assert len(prov["chunks"]) == -(-len(ids) // (60 // P))  # resumable chunks of chunk_size // P examples
    assert not (run.outputs_dir("local") / ".partial").exists()


def test_same_seed_gives_identical_perturbed_outputs_and_rerun_skips(run: RunDir, tmp_path: Path) -> None:
    other = RunDir(shutil.copytree(run.root, tmp_path / "other"))
    collect_run(run.root, "local", console=quiet(), perturbations=2)
    collect_run(other.root, "local", chunk_size=7, console=quiet(), perturbations=2)  # other chunking, same result
    aid = "tf-target-int8.tflite"
    a, b = perturbed_npz(run, "local", aid), perturbed_npz(other, "local", aid)
    with np.load(a) as za, np.load(b) as zb:
        assert np.array_equal(za["index"], zb["index"]) and np.array_equal(za["logits"], zb["logits"])
    before = a.stat().st_mtime_ns
    collect_run(run.root, "local", console=quiet(), perturbations=2)  # nothing to redo
    assert a.stat().st_mtime_ns == before
    # another seed in [attack] redoes the perturbed outputs (and only those) with other noise
    with run.experiment.open("a") as f:
        f.write("[attack]\nseed = 5\nsamia_perturbations = 2\n")
    plain_before = run.output_npz("local", aid).stat().st_mtime_ns
    collect_run(run.root, "local", console=quiet())
    assert run.output_npz("local", aid).stat().st_mtime_ns == plain_before
    with np.load(a) as za, np.load(b) as zb:
        assert za["logits"].shape == zb["logits"].shape and not np.array_equal(za["logits"], zb["logits"])
        assert int(za["seed"]) == 5


def test_no_perturbed_queries_by_default(run: RunDir) -> None:
    collect_run(run.root, "local", console=quiet())
    assert not list(run.outputs_dir("local").glob("*.perturbed.*"))


def test_negative_perturbations_refused(run: RunDir, tmp_path: Path) -> None:
    with TreeState(run.root):
        cli_refuses(["collect", str(run.root), "--perturbations", "-1"], "--perturbations", ">= 0")


def test_each_model_is_sent_once_for_plain_and_perturbed_queries(run: RunDir) -> None:
    """Plain then perturbed queries per artifact on one runner: the model is uploaded and loaded once, the perturbed
    pass says it reused it, and the outputs are those of a fresh load (the in-process check above)."""
    collect_run(run.root, "local", batch_size=40, chunk_size=60, console=quiet(), perturbations=P)
    for rec in run.load_manifest().artifacts:
        plain = json.loads(run.output_provenance("local", rec.id).read_text())
        perturbed = json.loads(perturbed_npz(run, "local", rec.id).with_suffix(".json").read_text())
        size = run.artifact_path(rec).stat().st_size
        assert plain["bytes_sent"]["model"] == size, plain["bytes_sent"]
        assert perturbed["bytes_sent"]["model"] == 0, perturbed["bytes_sent"]
        assert perturbed["chunks"][0].get("model_reused") is True
        assert perturbed["chunks"][0]["load_seconds"] == 0.0
