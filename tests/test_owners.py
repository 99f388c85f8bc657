"""Owners, membership truth and the reference-model data model (issue 12, items 3 and 4).

- Membership truth on a built run: every artifact's weights were trained on exactly its owner's ``*_in`` ids (as
  recorded by the build from the arrays it handed the builder, not as the splits claim), and each owner's hold-out
  lies outside every scored set.
- The online threat model: reference models trained on random halves of the attacker's pool, which contains the
  target candidates; each candidate IN for about half of them (binomial tolerance from K); the population is
  disjoint from every target set; raising K keeps the first references.
- ``threat_model.json``: what the build writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.build.artifacts import content_digest
from harness.build.threat import build_threat_model, write_threat_model
from harness.config import Experiment, load_experiment
from harness.data import load_dataset, make_splits, owner_data, query_inputs
from rundir import RunDir, Splits


def _online(k: int, **splits) -> Experiment:
    sizes = {"target_in": 200, "target_out": 200, "population": 100, **splits}
    return Experiment.model_validate({"experiment": {"seed": 3}, "splits": sizes,
                                      "attack": {"reference_models": k, "threat_model": "online"}})  # fmt: skip


# --------------------------------------------------------------------------- membership truth (a built run)


def test_every_artifact_was_trained_on_exactly_its_members(tiny_run: Path) -> None:
    rd = RunDir(tiny_run)
    splits = rd.load_splits()
    exp = load_experiment(rd.experiment)
    ds = load_dataset(exp.data.dataset)
    built = [a for a in rd.load_manifest().artifacts if a.framework in ("tf", "torch")]
    assert {a.role for a in built} == {"target", "shadow"}
    for rec in built:
        training = getattr(rec, "training", None)
        assert isinstance(training, dict), f"{rec.id}: the build recorded no training ids"
        members = splits.members(rec.role, rec.shadow)
        hold = splits.holdout(rec.role, rec.shadow)
        scored = splits.query_ids(rec.role, rec.shadow)
        # the ids and the very arrays the builder was handed are the owner's members, nothing more, nothing less
        assert training["n_train"] == len(members), rec.id
        assert training["ids_sha256"] == content_digest(np.sort(members).astype(np.int64)), rec.id
        assert training["inputs_sha256"] == content_digest(
            query_inputs(ds, exp.data.preprocess, np.sort(members)), ds.y[np.sort(members)].astype(np.int64)
        ), rec.id
        # the hold-out is its own split: recorded as given, never among the scored (or collected) ids
        assert training["n_holdout"] == len(hold) == round(exp.splits.holdout_fraction * len(members)) > 0, rec.id
        assert training["holdout_ids_sha256"] == content_digest(np.sort(hold).astype(np.int64)), rec.id
        assert not np.intersect1d(hold, scored).size, rec.id
    assert not np.intersect1d(splits.target_val, splits.collected_ids("target")).size
    for k in range(splits.n_shadows):
        assert not np.intersect1d(splits.target_val, splits.collected_ids("shadow", k)).size


def test_owner_data_hands_the_builder_exactly_the_members() -> None:
    ds = load_dataset("digits")
    exp = _online(4, target_in=150, target_out=150, population=50)
    s = make_splits(exp, ds.y)
    for role, k in [("target", None)] + [("shadow", j) for j in range(4)]:
        o = owner_data(ds, s, exp.data.preprocess, role, k, seed=1)
        np.testing.assert_array_equal(np.sort(o.ids_train), s.members(role, k))
        np.testing.assert_array_equal(np.sort(o.ids_holdout), s.holdout(role, k))
        np.testing.assert_array_equal(o.x_train, query_inputs(ds, exp.data.preprocess, o.ids_train))
        assert not np.intersect1d(o.ids_holdout, s.query_ids(role, k)).size


# --------------------------------------------------------------------------- the online threat model


@pytest.mark.parametrize("k", [16, 64])
def test_online_candidates_are_in_for_about_half_the_references(k: int) -> None:
    exp = _online(k, pool=800)
    s = make_splits(exp, np.arange(2000) % 10)
    assert s.online and s.n_references == k == s.n_shadows
    cand = s.candidates
    pool = np.unique(np.concatenate([cand, *s.shadow_in, *s.shadow_out, *s.shadow_val]))
    assert len(pool) == 800 and set(cand) <= set(pool)  # the pool holds the candidates and 400 others
    for j in range(k):  # each reference: a random half of the pool; its hold-out and non-members the other half
        assert len(s.shadow_in[j]) == 400 and len(s.shadow_val[j]) == 40 and len(s.shadow_out[j]) == 360
        np.testing.assert_array_equal(np.union1d(np.union1d(s.shadow_in[j], s.shadow_out[j]), s.shadow_val[j]), pool)
    inn = s.reference_membership(cand)  # bool [K, n]
    out = s.reference_nonmembership(cand)
    assert not (inn & out).any()
    counts = inn.sum(axis=0)  # per candidate: Binomial(K, 1/2)
    n = len(cand)
    sd = math.sqrt(k) / 2
    z = 6.0  # P(|Z| > 6) ~ 2e-9 per candidate: a failure is a bug, not chance
    assert counts.min() >= k / 2 - z * sd and counts.max() <= k / 2 + z * sd, (counts.min(), counts.max())
    assert abs(counts.mean() - k / 2) <= z * sd / math.sqrt(n)
    assert abs(counts.var() - k / 4) <= z * (k / 4) * math.sqrt(2 / n)  # the spread of a binomial, not all-or-none
    assert (counts > 0).all() and (counts < k).all()  # at these K every candidate has IN and OUT references
    # members and non-members of the target are treated alike (the attacker cannot tell them apart)
    assert abs(counts[: len(s.target_in)].mean() - counts[len(s.target_in):].mean()) <= z * sd * math.sqrt(2 / (n / 2))


def test_online_population_and_hold_outs_stay_off_the_target() -> None:
    s = make_splits(_online(8, pool=600), np.arange(1500) % 10)
    pop = s.population_ids
    assert len(pop) == 100
    assert not np.intersect1d(pop, np.concatenate([s.candidates, s.target_val])).size
    for j in range(8):  # no reference trains on (or holds out) population ids or the target's hold-out
        mine = np.concatenate([s.shadow_in[j], s.shadow_out[j], s.shadow_val[j]])
        assert not np.intersect1d(mine, pop).size and not np.intersect1d(mine, s.target_val).size
    # every artifact is queried on the population; the target on nothing else but its candidates
    np.testing.assert_array_equal(np.sort(s.collected_ids("target")), np.sort(np.concatenate([s.candidates, pop])))
    assert set(pop) <= set(s.collected_ids("shadow", 5))


def test_raising_k_keeps_the_first_references_and_the_target() -> None:
    labels = np.arange(1500) % 10
    a, b = make_splits(_online(4, pool=600), labels), make_splits(_online(9, pool=600), labels)
    np.testing.assert_array_equal(a.target_in, b.target_in)
    np.testing.assert_array_equal(a.population_ids, b.population_ids)
    for j in range(4):
        np.testing.assert_array_equal(a.shadow_in[j], b.shadow_in[j])
        np.testing.assert_array_equal(a.shadow_val[j], b.shadow_val[j])
    assert not np.array_equal(b.shadow_in[4], b.shadow_in[5])  # each reference draws its own half


def test_default_pool_matches_the_target_training_size() -> None:
    s = make_splits(_online(4, target_in=300, target_out=100, population=0), np.arange(1500) % 10)
    assert all(len(x) == 300 for x in s.shadow_in) and s.population is None  # pool = 2 * target_in = 600


def test_every_reference_goes_through_the_targets_compression_pipeline() -> None:
    from harness.build.stage import plan

    planned, _ = plan(_online(3))
    by_owner: dict[str, set[tuple[str, str, str]]] = {}
    for p in planned:
        by_owner.setdefault(p.tag, set()).add((p.framework, p.variant, p.format))
    assert sorted(by_owner) == ["shadow0", "shadow1", "shadow2", "target"]
    assert all(v == by_owner["target"] for v in by_owner.values()) and len(by_owner["target"]) > 5


def test_offline_references_never_see_a_candidate() -> None:
    exp = Experiment.model_validate({"splits": {"target_in": 100, "target_out": 100, "shadow_in": 80,
                                                "shadow_out": 80, "population": 30}, "attack": {"reference_models": 5}})
    s = make_splits(exp, np.arange(1500) % 10)
    assert not s.online and s.n_references == 5
    off_limits = np.concatenate([s.candidates, s.target_val, s.population_ids])
    for j in range(5):
        mine = np.concatenate([s.shadow_in[j], s.shadow_out[j], s.shadow_val[j]])
        assert not np.intersect1d(mine, off_limits).size
    assert not s.reference_membership(s.candidates).any()


def test_online_splits_too_small_name_the_keys() -> None:
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=r"dataset has 500 examples .*splits.population .*splits.pool"):
        make_splits(_online(4, pool=600), np.zeros(500, np.int64))


def test_old_splits_file_still_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.permutation(100)
    np.savez(tmp_path / "splits.npz", labels=rng.integers(0, 3, 100), target_in=ids[:20], target_out=ids[20:40],
             shadow_in=ids[40:60], shadow_out=ids[60:80])  # fmt: skip
    s = Splits.load(tmp_path / "splits.npz")
    assert s.n_references == 1 and not s.online and s.population is None
    assert len(s.holdout("target")) == 0 and len(s.holdout("shadow", 0)) == 0
    np.testing.assert_array_equal(s.collected_ids("shadow", 0), np.concatenate([ids[40:80], ids[:40]]))


# --------------------------------------------------------------------------- threat_model.json


def test_threat_model_json_states_the_owners(tmp_path: Path) -> None:
    exp = _online(8, pool=600)
    s = make_splits(exp, np.arange(1500) % 10)
    rd = RunDir(tmp_path / "run")
    doc = build_threat_model(exp, s, "abc")
    write_threat_model(rd, doc)
    path = rd.threat_model
    tm = json.loads(path.read_text())
    assert tm["threat_model"] == "online" and tm["online"] is True and tm["reference_models"] == 8
    assert tm["seed"] == 3 and tm["splits_sha256"] == "abc"
    assert tm["attacker_pool"] == {**tm["attacker_pool"], "contains_target_candidates": True, "size": 600,
                                   "n_target_candidates": 400, "n_other": 200}  # fmt: skip
    assert tm["sizes"]["target_in"] == 200 and tm["sizes"]["target_val"] == 20 and tm["sizes"]["population"] == 100
    assert tm["sizes"]["reference_in"] == {"min": 300, "max": 300}
    counts = s.reference_membership(s.candidates).sum(axis=0)
    assert tm["candidate_in_references"]["expected"] == 4 and tm["candidate_in_references"]["max"] == counts.max()
    assert "online" in tm["summary"] and "8 reference models" in tm["summary"]
    # unchanged content: the file is not rewritten
    before = path.stat().st_mtime_ns
    write_threat_model(rd, build_threat_model(exp, s, "abc"))
    assert path.stat().st_mtime_ns == before
    assert not [p for p in rd.root.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_built_run_has_its_threat_model(tiny_run: Path) -> None:
    rd = RunDir(tiny_run)
    tm = json.loads(rd.threat_model.read_text())
    splits = rd.load_splits()
    assert tm["source"] == "compleak build" and tm["threat_model"] == splits.threat_model == "offline"
    assert tm["reference_models"] == splits.n_references and tm["attacker_pool"]["contains_target_candidates"] is False
    assert tm["seed"] == load_experiment(rd.experiment).experiment.seed
    from rundir import sha256_file

    assert tm["splits_sha256"] == sha256_file(rd.splits)


# --------------------------------------------------------------------------- collect queries the population


ONLINE_TOML = """
[experiment]
name = "owners-collect"
seed = 4
[data]
dataset = "digits"
[splits]
target_in = 60
target_out = 60
population = 40
[attack]
reference_models = 2
threat_model = "online"
"""


def test_collect_queries_the_population_on_every_artifact_and_each_id_once(tmp_path: Path) -> None:
    from rich.console import Console
    from test_collect import _tflite

    from devices.ondevice import compleak_runner as cr
    from harness.collect.stage import collect_run
    from rundir import ArtifactRecord, Manifest, TensorSpec, sha256_file

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    rd.experiment.write_text(ONLINE_TOML)
    exp = load_experiment(rd.experiment)
    splits = make_splits(exp, load_dataset("digits").y)
    splits.save(rd.splits)
    records = []
    for aid, role, k in [("tf-target-original.tflite", "target", None), ("tf-shadow0-original.tflite", "shadow", 0),
                         ("tf-shadow1-original.tflite", "shadow", 1)]:  # fmt: skip
        path = rd.artifacts_dir / aid
        path.parent.mkdir(exist_ok=True)
        _tflite(path, 1 + (k or 0), False)
        desc = cr.describe(path)
        records.append(ArtifactRecord(
            id=aid, role=role, shadow=k, variant="original", framework="tf", format="tflite", path=f"artifacts/{aid}",
            sha256=sha256_file(path), bytes=path.stat().st_size, inputs=[TensorSpec(**t) for t in desc["inputs"]],
            outputs=[TensorSpec(**t) for t in desc["outputs"]],
        ))  # fmt: skip
    Manifest(artifacts=records).save(rd.manifest)
    collect_run(rd.root, "local", console=Console(quiet=True))
    pop = splits.population_ids
    for rec in records:
        index = rd.load_outputs("local", rec.id).index
        np.testing.assert_array_equal(index, splits.collected_ids(rec.role, rec.shadow))
        assert set(pop) <= set(index) and set(splits.candidates) <= set(index)
        assert not np.intersect1d(index, splits.target_val).size
    # an online reference's own sets overlap the candidates, yet it is queried once per id
    own = splits.query_ids("shadow", 0)
    assert np.intersect1d(own, splits.candidates).size and len(rd.load_outputs("local", records[1].id).index) == len(
        np.unique(np.concatenate([own, splits.candidates, pop]))
    )
