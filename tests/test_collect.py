"""The collect stage on a small real run directory (digits, TF-Lite target + shadow), locally and over SSH."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sshd_fixtures import SshServer

from devices.errors import DeviceError
from devices.ondevice import compleak_runner as cr
from devices.spec import DeviceSpec
from harness.collect.stage import collect_run
from harness.errors import HarnessError
from rundir import ArtifactRecord, Manifest, RunDir, TensorSpec, device_dirname, sha256_file

TOML = """
[experiment]
name = "collect-test"
seed = 3
[data]
dataset = "digits"
[splits]
target_in = 60
target_out = 60
shadow_in = 50
shadow_out = 50
n_shadows = 1
"""


def _tflite(out: Path, seed: int, int8: bool) -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rep = np.random.default_rng(seed).random((16, 8, 8, 1), dtype=np.float32)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(16))
    out.write_bytes(conv.convert())


def make_run(root: Path) -> RunDir:
    """A run directory as the build stage writes it: experiment.toml, splits.npz, manifest.json, artifacts/."""
    from harness.config import load_experiment
    from harness.data import load_dataset, make_splits

    root.mkdir(parents=True)
    (root / "experiment.toml").write_text(TOML)
    rd = RunDir(root)
    exp = load_experiment(rd.experiment)
    make_splits(exp, load_dataset("digits").y).save(rd.splits)
    rd.artifacts_dir.mkdir()
    records = []
    for aid, role, shadow, seed, int8 in [("tf-target-original.tflite", "target", None, 1, False),
                                           ("tf-target-int8.tflite", "target", None, 2, True),
                                           ("tf-shadow0-original.tflite", "shadow", 0, 3, False)]:
        path = rd.artifacts_dir / aid
        _tflite(path, seed, int8)
        desc = cr.describe(path)
        records.append(ArtifactRecord(
            id=aid, role=role, shadow=shadow, variant="int8" if int8 else "original", framework="tf",
            format="tflite", path=f"artifacts/{aid}", sha256=sha256_file(path), bytes=path.stat().st_size,
            inputs=[TensorSpec(**t) for t in desc["inputs"]], outputs=[TensorSpec(**t) for t in desc["outputs"]],
        ))
    Manifest(artifacts=records).save(rd.manifest)
    return rd


@pytest.fixture(scope="module")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("tpl") / "run").root


@pytest.fixture
def run(run_template: Path, tmp_path: Path) -> RunDir:
    import shutil

    shutil.copytree(run_template, tmp_path / "run")
    return RunDir(tmp_path / "run")


def quiet() -> Console:
    return Console(quiet=True)


def _expected(rd: RunDir, rec: ArtifactRecord) -> tuple[np.ndarray, np.ndarray]:
    from harness.config import load_experiment
    from harness.data import load_dataset, query_inputs

    ids = rd.load_splits().collected_ids(rec.role, rec.shadow)
    x = query_inputs(load_dataset("digits"), load_experiment(rd.experiment).data.preprocess, ids)
    return ids, cr.load_model(str(rd.artifact_path(rec))).predict(x)


def test_local_collect_writes_outputs_and_provenance(run: RunDir) -> None:
    written = collect_run(run.root, "local", batch_size=50, console=quiet())
    manifest = run.load_manifest()
    assert set(written) == {a.id for a in manifest.artifacts}
    for rec in manifest.artifacts:
        out = run.load_outputs("local", rec.id)
        ids, expected = _expected(run, rec)
        assert np.array_equal(out.index, ids) and out.kind == "logits"
        np.testing.assert_allclose(out.values, expected, atol=1e-6)
        prov = json.loads(run.output_provenance("local", rec.id).read_text())
        assert prov["artifact"]["sha256"] == rec.sha256 and prov["device"]["id"] == "local"
        assert prov["runtime"]["name"] == "ai_edge_litert" and prov["runtime"]["version"]
        assert prov["batch_size"] == 50 and sum(prov["examples_per_batch"]) == len(ids)
        assert len(prov["wall_seconds_per_batch"]) == len(prov["examples_per_batch"])
        assert prov["started"] and prov["finished"] and prov["device"]["python"]
    assert not (run.outputs_dir("local") / ".partial").exists()
    # the shadow artifact is queried on its own split and on the target candidates (reference-model queries)
    splits = run.load_splits()
    shadow_ids = run.load_outputs("local", "tf-shadow0-original.tflite").index
    expected_ids = np.concatenate([splits.shadow_in[0], splits.shadow_out[0], splits.target_in, splits.target_out])
    np.testing.assert_array_equal(np.sort(shadow_ids), np.sort(expected_ids))


def test_rerun_skips_finished_artifacts(run: RunDir) -> None:
    collect_run(run.root, "local", console=quiet())
    stamps = {p: p.stat().st_mtime_ns for p in run.outputs_dir("local").iterdir()}
    console = Console(record=True, width=200)
    collect_run(run.root, "local", console=console)
    assert "already collected" in console.export_text()
    assert {p: p.stat().st_mtime_ns for p in run.outputs_dir("local").iterdir()} == stamps


def test_changed_artifact_is_refused_and_nothing_is_lost(run: RunDir) -> None:
    collect_run(run.root, "local", artifacts=["tf-target-original.tflite"], console=quiet())
    kept = run.output_npz("local", "tf-target-original.tflite").read_bytes()
    victim = run.artifacts_dir / "tf-target-int8.tflite"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(HarnessError, match="does not match the manifest") as exc:
        collect_run(run.root, "local", console=quiet())
    assert "\n" not in str(exc.value)
    assert run.output_npz("local", "tf-target-original.tflite").read_bytes() == kept
    with pytest.raises(HarnessError, match="no artifact 'nope'; available: "):
        collect_run(run.root, "local", artifacts=["nope"], console=quiet())


def test_queries_npz_is_used_when_present(run: RunDir) -> None:
    splits = run.load_splits()
    index = np.concatenate([splits.target_in, splits.target_out, splits.shadow_in[0], splits.shadow_out[0]])
    x = np.random.default_rng(0).random((len(index), 8, 8, 1), dtype=np.float32)
    np.savez(run.root / "queries.npz", index=index[::-1], x=x[::-1])  # any order: matched by id
    (run.root / "experiment.toml").unlink()  # an imported run need not carry the dataset config
    collect_run(run.root, "local", artifacts=["tf-target-original.tflite"], console=quiet())
    out = run.load_outputs("local", "tf-target-original.tflite")
    rows = {int(i): p for p, i in enumerate(index)}
    xq = x[[rows[int(i)] for i in out.index]]
    model = cr.load_model(str(run.artifacts_dir / "tf-target-original.tflite"))
    np.testing.assert_allclose(out.values, model.predict(xq), atol=1e-6)
    prov = json.loads(run.output_provenance("local", "tf-target-original.tflite").read_text())
    assert prov["query_inputs"].endswith("queries.npz")


@pytest.mark.ssh
def test_sshd_killed_mid_collection_then_rerun_completes(
    run: RunDir, sshd_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.collect.chunks as collect_mod  # the chunk loop stores each finished chunk

    dev_dir = run.outputs_dir(sshd_server.device_id)
    assert dev_dir.name == device_dirname(sshd_server.device_id)
    second = "tf-target-int8.tflite"
    partial = dev_dir / ".partial" / second
    killed = threading.Event()
    store = collect_mod.atomic_write_json

    def store_then_kill(path: Path, obj: object) -> None:  # sshd dies right after the second artifact's 1st chunk
        store(path, obj)
        if not killed.is_set() and Path(path).parent.parent.name == second:
            sshd_server.kill()
            killed.set()

    monkeypatch.setattr(collect_mod, "atomic_write_json", store_then_kill)
    remote_ws = tmp_path / "remote workspace"  # private: a killed session cannot remove its job directory
    spec = DeviceSpec(sshd_server.uri, identity=sshd_server.identity, known_hosts=sshd_server.known_hosts,
                      workspace=str(remote_ws))
    opts = dict(batch_size=16, chunk_size=30, console=quiet())
    with pytest.raises(DeviceError) as exc:
        collect_run(run.root, spec, **opts)
    assert killed.is_set() and "\n" not in str(exc.value) and sshd_server.device_id in str(exc.value)
    assert run.output_npz(sshd_server.device_id, "tf-target-original.tflite").is_file()  # finished one stays
    assert not run.output_npz(sshd_server.device_id, second).exists()
    chunks_before = sorted(p.name for p in partial.rglob("*.npz"))
    assert chunks_before  # partial progress of the interrupted artifact is kept

    sshd_server.restart()
    rerun_start = time.time()
    collect_run(run.root, spec, **opts)
    for rec in run.load_manifest().artifacts:
        out = run.load_outputs(sshd_server.device_id, rec.id)  # validates: no duplicate ids, no NaN
        ids, expected = _expected(run, rec)
        assert np.array_equal(out.index, ids)  # no lost or duplicated rows, in query order
        np.testing.assert_allclose(out.values, expected, atol=1e-6)
    prov = json.loads(run.output_provenance(sshd_server.device_id, second).read_text())
    assert prov["device"]["id"] == sshd_server.device_id and prov["n_queries"] == 120
    reused = [c for c in prov["chunks"] if _ts(c["started"]) < rerun_start]
    assert len(reused) == len(chunks_before)  # finished chunks were not redone
    assert not partial.exists()
    assert len(list(remote_ws.glob("job.*"))) <= 1  # only the killed session's directory is left behind


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_bad_run_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="run directory not found"):
        collect_run(tmp_path / "missing", "local", console=quiet())
    (tmp_path / "empty").mkdir()
    from rundir import ContractError

    with pytest.raises(ContractError, match="manifest.json: file not found"):
        collect_run(tmp_path / "empty", "local", console=quiet())
