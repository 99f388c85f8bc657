"""The run-directory contract: round trips and one-line errors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    OutputBatch,
    ResultRow,
    RunDir,
    Splits,
    device_dirname,
    load_results,
    save_results,
)


def _splits(n: int = 100, k: int = 2) -> Splits:
    rng = np.random.default_rng(0)
    ids = rng.permutation(n)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    shadow_in = [ids[40 + 15 * i : 40 + 15 * i + 8] for i in range(k)]
    shadow_out = [ids[48 + 15 * i : 55 + 15 * i] for i in range(k)]
    return Splits(labels, ids[:20], ids[20:40], shadow_in, shadow_out)


def test_splits_round_trip_and_legacy_keys(tmp_path):
    s = _splits()
    s.save(tmp_path / "splits.npz")
    z = np.load(tmp_path / "splits.npz")
    assert {"shadow_in", "shadow_out", "shadow_in_1", "shadow_out_1"} <= set(z.files)
    back = Splits.load(tmp_path / "splits.npz")
    assert back.n_shadows == 2
    np.testing.assert_array_equal(back.shadow_out[1], s.shadow_out[1])
    np.testing.assert_array_equal(back.query_ids("shadow", 1), np.concatenate([s.shadow_in[1], s.shadow_out[1]]))
    # a file with only the un-numbered shadow arrays is read as one shadow model
    np.savez(tmp_path / "old.npz", labels=s.labels, target_in=s.target_in, target_out=s.target_out,
             shadow_in=s.shadow_in[0], shadow_out=s.shadow_out[0])
    assert Splits.load(tmp_path / "old.npz").n_shadows == 1


def _online_splits(n: int = 200, k: int = 4) -> Splits:
    """Online: each reference trains on a random half of a pool (the 60 candidates + 40 more ids)."""
    rng = np.random.default_rng(1)
    ids = rng.permutation(n)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    pool = ids[:100]
    ins, outs, vals = [], [], []
    for _ in range(k):
        order = rng.permutation(pool)
        ins.append(np.sort(order[:50])), vals.append(np.sort(order[50:55])), outs.append(np.sort(order[55:]))
    return Splits(labels, np.sort(ids[:30]), np.sort(ids[30:60]), ins, outs, target_val=np.sort(ids[100:105]),
                  shadow_val=vals, population=np.sort(ids[105:125]), online=True)


def test_splits_new_keys_round_trip_and_old_files_still_load(tmp_path):
    s = _online_splits()
    s.save(tmp_path / "splits.npz")
    z = np.load(tmp_path / "splits.npz")
    assert {"target_val", "shadow_val_0", "shadow_val_3", "population", "online"} <= set(z.files)
    back = Splits.load(tmp_path / "splits.npz")
    assert back.online and back.threat_model == "online" and back.n_references == 4
    np.testing.assert_array_equal(back.target_val, s.target_val)
    np.testing.assert_array_equal(back.holdout("shadow", 2), s.shadow_val[2])
    np.testing.assert_array_equal(back.population_ids, s.population)
    # collected ids: each id once although an online reference's sets overlap the candidates; no hold-out queried
    for role, k in (("target", None), ("shadow", 1)):
        got = back.collected_ids(role, k)
        assert len(np.unique(got)) == len(got)
        assert set(s.candidates) <= set(got) and set(s.population) <= set(got)
        assert not np.intersect1d(got, s.target_val).size
    # a reference's hold-out is queried only where it holds a candidate (then it is neither IN nor OUT for it)
    np.testing.assert_array_equal(np.intersect1d(back.collected_ids("shadow", 1), s.shadow_val[1]),
                                  np.intersect1d(s.candidates, s.shadow_val[1]))  # fmt: skip
    np.testing.assert_array_equal(back.collected_ids("target"), np.concatenate([s.target_in, s.target_out,
                                                                               s.population]))  # fmt: skip
    inn = back.reference_membership(s.candidates)
    out = back.reference_nonmembership(s.candidates)
    assert inn.shape == (4, 60) and not (inn & out).any()
    # a file written before hold-outs / population / the threat model existed: empty hold-outs, offline
    old = tmp_path / "old.npz"
    a, b = np.setdiff1d(s.shadow_in[0], s.candidates), np.setdiff1d(s.shadow_out[0], s.candidates)
    np.savez(old, labels=s.labels, target_in=s.target_in, target_out=s.target_out, shadow_in_0=a, shadow_out_0=b)
    o = Splits.load(old)
    assert not o.online and o.population is None and len(o.target_val) == 0 and len(o.holdout("shadow", 0)) == 0
    o.save(tmp_path / "resaved.npz")
    assert Splits.load(tmp_path / "resaved.npz").n_shadows == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(online=np.array(False)), "shadow split 0 overlaps the target split"),
        (lambda d: d.update(target_val=d["target_in"][:2]), "target_val overlaps target_in"),
        (lambda d: d.update(shadow_val_1=d["shadow_in_1"][:2]), "shadow_in_1 and shadow_val_1 overlap"),
        (lambda d: d.update(shadow_in_2=np.union1d(d["shadow_in_2"], d["target_val"][:1])), "uses ids of target_val"),
        (lambda d: d.update(population=d["target_out"][:3]), "population overlaps the target's sets"),
        (lambda d: d.update(population=np.array([1, 1])), "population contains duplicate ids"),
        (lambda d: d.pop("shadow_val_3"), "do not match the 4 reference models"),
        (lambda d: d.update(online=np.array([1, 0])), "'online' must be a boolean scalar"),
    ],
)
def test_bad_owner_splits_name_the_file(tmp_path, mutate, message):
    _online_splits().save(tmp_path / "splits.npz")
    d = dict(np.load(tmp_path / "splits.npz"))
    mutate(d)
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ContractError) as err:
        Splits.load(tmp_path / "bad.npz")
    assert message in str(err.value) and "bad.npz" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(target_out=d["target_in"][:5]), "target_in and target_out overlap"),
        (lambda d: d.update(shadow_in_0=d["target_in"][:3]), "overlaps the target split"),
        (lambda d: d.update(target_in=np.array([0, 10_000])), "outside [0, 100)"),
        (lambda d: d.pop("labels"), "missing array 'labels'"),
        (lambda d: d.pop("shadow_out_1"), "needs both shadow_in_1 and shadow_out_1"),
    ],
)
def test_bad_splits_name_the_file(tmp_path, mutate, message):
    s = _splits()
    s.save(tmp_path / "splits.npz")
    d = dict(np.load(tmp_path / "splits.npz"))
    d.pop("shadow_in"), d.pop("shadow_out")
    mutate(d)
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ContractError) as err:
        Splits.load(tmp_path / "bad.npz")
    assert message in str(err.value) and "bad.npz" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "splits.npz").write_text("not a zip")
    with pytest.raises(ContractError, match="not a readable .npz"):
        Splits.load(tmp_path / "splits.npz")
    with pytest.raises(ContractError, match="file not found"):
        Manifest.load(tmp_path / "nope.json")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ContractError, match="invalid JSON at line 1"):
        Manifest.load(tmp_path / "manifest.json")


def _record(i: str, role: str = "target", shadow=None, variant="original") -> ArtifactRecord:
    spec = {"name": "x", "shape": [-1, 8, 8, 1], "dtype": "float32"}
    return ArtifactRecord(id=i, role=role, shadow=shadow, variant=variant, framework="tf", format="tflite",
                          path=f"artifacts/{i}", sha256="0" * 64, bytes=1, inputs=[spec],
                          outputs=[{"name": "y", "shape": [-1, 10], "dtype": "float32"}])


def test_manifest_round_trip_shadow_matching_and_errors(tmp_path):
    m = Manifest()
    m.upsert(_record("t"))
    m.upsert(_record("s1", "shadow", 1))
    m.upsert(_record("s0", "shadow", 0))
    m.upsert(_record("s0q", "shadow", 0, variant="int8"))
    m.upsert(_record("t", variant="original"))  # replaces, does not duplicate
    m.save(tmp_path / "manifest.json")
    back = Manifest.load(tmp_path / "manifest.json")
    assert [a.id for a in back.shadows_of(back.by_id("t"))] == ["s0", "s1"]
    assert len(back.artifacts) == 4
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["artifacts"].append(raw["artifacts"][0])
    (tmp_path / "dup.json").write_text(json.dumps(raw))
    with pytest.raises(ContractError, match="duplicate artifact ids"):
        Manifest.load(tmp_path / "dup.json")
    raw["artifacts"] = [dict(raw["artifacts"][0], format="keras")]
    (tmp_path / "fmt.json").write_text(json.dumps(raw))
    with pytest.raises(ContractError, match=r"fmt.json: artifacts.0.format"):
        Manifest.load(tmp_path / "fmt.json")


def test_outputs_validation(tmp_path):
    ob = OutputBatch(np.array([3, 1, 2]), np.eye(3, dtype=np.float32), "probs")
    ob.save(tmp_path / "o.npz")
    back = OutputBatch.load(tmp_path / "o.npz")
    assert back.kind == "probs"
    np.testing.assert_array_equal(back.rows(np.array([2, 3])), np.eye(3, dtype=np.float32)[[2, 0]])
    with pytest.raises(ContractError, match="required example ids missing"):
        back.rows(np.array([7]), source="o.npz")
    bad = np.eye(3, dtype=np.float32)
    bad[1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", index=np.array([0, 1, 2]), logits=bad)
    with pytest.raises(ContractError, match="nan.npz: 1 rows of logits contain NaN"):
        OutputBatch.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "len.npz", index=np.array([0, 1]), logits=np.eye(3))
    with pytest.raises(ContractError, match="index has 2 rows but logits has 3"):
        OutputBatch.load(tmp_path / "len.npz")


def test_results_and_paths(tmp_path):
    run = RunDir(tmp_path)
    row = ResultRow(family="NR", method="entropy", variant="int8", auc=0.6, balanced_accuracy=0.55,
                    tpr_at_fpr={"0.001": None, "0.01": 0.02}, auc_ci=[0.55, 0.65], n_members=10, n_nonmembers=10)
    save_results(run.results("ssh://pi@host:22"), [row])
    assert run.results("ssh://pi@host:22").parent.name == "ssh_pi@host_22"
    assert load_results(run.results("ssh://pi@host:22"))[0] == row
    assert device_dirname("local") == "local"
    assert device_dirname("adb://emulator-5554") == "adb_emulator-5554"
