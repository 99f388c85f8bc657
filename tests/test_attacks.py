"""The attack engine on synthetic outputs with known membership truth (compleak.synthetic)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from compleak.attacks import LearnedAttack, ThresholdAttack, shadow_split
from compleak.engine import run_attacks
from compleak.signals import entropy, log_posterior, modified_entropy
from compleak.synthetic import VariantSpec as V
from compleak.synthetic import make_splits, synthetic_outputs
from rundir import ContractError, OutputBatch, Splits


def _best(rows, family, variant=None):  # type: ignore[no-untyped-def]
    return max(r.auc for r in rows if r.family == family and (variant is None or r.variant == variant))


@pytest.fixture(scope="module")
def sharper_rows():  # type: ignore[no-untyped-def]
    sp = make_splits((200, 200), (250, 250), n_shadows=2, seed=0, n_population=300)
    variants = {"original": V(1.5, 0.0), "prune-0.8": V(2.0, 0.0), "int8": V(1.8, 0.0)}
    t, s = synthetic_outputs(sp, variants, seed=0, reference_on_target=True)
    return run_attacks(sp, t, s, bootstrap=50, seed=0)


def test_members_sharper_every_family_and_method_beats_chance(sharper_rows) -> None:  # type: ignore[no-untyped-def]
    rows = sharper_rows
    fams = {r.family for r in rows}
    assert fams == {"NR", "SR", "MR", "baseline"}
    methods = {r.method for r in rows}
    assert {"posterior-lr", "posterior-label-rf", "sorted-posterior-lr", "sorted-posterior-label-rf",
            "entropy-threshold", "mentropy-threshold", "sr1-lr", "sr2-rf", "sr2-mlp", "mr-fusion", "mr-no-original",
            "lira-offline", "rmia-offline"} <= methods
    assert "samia" not in methods  # no perturbed outputs: skipped, not faked
    for r in rows:
        if r.method in ("posterior-lr", "posterior-label-lr"):
            continue  # a linear model on the raw (unsorted) posterior cannot form the true-class confidence p_y
        assert r.auc > 0.6 and r.auc_ci[0] > 0.5, (r.family, r.method, r.variant, r.auc, r.auc_ci)
        assert r.auc_ci[0] <= r.auc <= r.auc_ci[1]
        assert r.balanced_accuracy > 0.5
        assert r.n_members == 200 and r.n_nonmembers == 200
        assert r.model_extra["fpr_resolvable"] == {"0.001": False, "0.01": True}
        assert r.tpr_at_fpr["0.001"] is None and 0.0 <= r.tpr_at_fpr["0.01"] <= 1.0
    mr = [r for r in rows if r.family == "MR"]
    assert all(r.variant == ["prune-0.8", "int8"] for r in mr)
    assert {r.model_extra["reference"] for r in rows if r.family == "baseline"} == {"per-example"}
    assert {r.model_extra["population"] for r in rows if r.method.startswith("rmia")} == {"splits.population"}
    for r in rows:
        assert r.model_extra["eps_lower_bound"] >= 0.0 and r.model_extra["score_key"].endswith(
            r.variant if isinstance(r.variant, str) else ",".join(r.variant))
        assert set(r.model_extra["per_class"]["auc"]) <= {str(c) for c in range(10)}


def test_identical_distributions_give_chance_auc_and_tpr() -> None:
    sp = make_splits((2500, 2500), (600, 600), n_shadows=1, seed=3)
    t, s = synthetic_outputs(sp, {"original": V(0.0, 0.0)}, seed=3)
    rows = run_attacks(sp, t, s, families=["NR"], baselines=["lira", "rmia"], bootstrap=100, seed=3)
    assert len(rows) == 12
    assert {r.method for r in rows if r.family == "baseline"} == {"lira-offline-per-class", "rmia-offline-per-class"}
    # each 95% CI covers 0.5 with probability 0.95, so with 12 attacks a miss or two is common: require 10 of 12
    # covering and every AUC within one CI width (~4 standard errors) of 0.5
    assert sum(r.auc_ci[0] <= 0.5 <= r.auc_ci[1] for r in rows) >= 10, [(r.method, r.auc_ci) for r in rows]
    for r in rows:
        assert abs(r.auc - 0.5) <= r.auc_ci[1] - r.auc_ci[0], (r.method, r.auc, r.auc_ci)
        assert r.model_extra["fpr_resolvable"]["0.001"] is True
        assert r.tpr_at_fpr["0.001"] == pytest.approx(0.001, abs=0.004), r.method


def test_sr_beats_nr_when_compression_shifts_members_only() -> None:
    # the original barely separates members; the compressed variant raises members' margins only. Example
    # difficulty is shared by both models, so comparing them (SR) cancels it while NR on the variant cannot.
    sp = make_splits((300, 300), (400, 400), n_shadows=1, seed=1)
    variants = {"original": V(0.0, 0.0, noise=0.1), "prune-0.8": V(1.5, 0.0, noise=0.2)}
    t, s = synthetic_outputs(sp, variants, seed=1)
    rows = run_attacks(sp, t, s, families=["NR", "SR"], baselines=[], bootstrap=20, seed=1)
    sr, nr = _best(rows, "SR", "prune-0.8"), _best(rows, "NR", "prune-0.8")
    assert sr > nr + 0.1, (sr, nr)
    assert _best(rows, "NR", "original") < 0.6


def test_mr_at_least_best_single_sr_with_independent_variants() -> None:
    # three variants, each with a weak member shift buried in independent noise: fusing them adds evidence
    sp = make_splits((300, 300), (500, 500), n_shadows=1, seed=2)
    variants = {"original": V(0.0, 0.0, noise=0.1), **{f"cluster-{k}": V(0.8, 0.0, noise=1.0) for k in (4, 8, 16)}}
    t, s = synthetic_outputs(sp, variants, seed=2)
    rows = run_attacks(sp, t, s, families=["SR", "MR"], baselines=[], bootstrap=20, seed=2)
    mr = next(r for r in rows if r.method == "mr-fusion")
    assert mr.auc >= _best(rows, "SR"), (mr.auc, _best(rows, "SR"))
    assert set(mr.model_extra["selected"]["sr2_models"]) == {"cluster-4", "cluster-8", "cluster-16"}


def test_probability_outputs_give_the_same_attack_as_logits() -> None:
    sp = make_splits((200, 200), (200, 200), n_shadows=1, seed=4)
    rows = {}
    for kind in ("logits", "probs"):
        t, s = synthetic_outputs(sp, {"original": V(1.5, 0.0)}, seed=4, kind=kind)
        rows[kind] = run_attacks(sp, t, s, families=["NR"], baselines=["lira"], bootstrap=0, seed=4)
    for a, b in zip(rows["logits"], rows["probs"]):
        assert a.method == b.method
        assert a.auc == pytest.approx(b.auc, abs=0.02), a.method  # a double softmax would change them


def test_per_example_reference_beats_per_class_for_lira() -> None:
    sp = make_splits((300, 300), (300, 300), n_shadows=2, seed=5)
    got = {}
    for ref in (False, True):
        t, s = synthetic_outputs(sp, {"original": V(1.0, 0.0, noise=0.2)}, seed=5, reference_on_target=ref)
        (row,) = run_attacks(sp, t, s, families=[], baselines=["lira"], bootstrap=0, seed=5)
        got[row.model_extra["reference"]] = row.auc
        assert row.method == ("lira-offline" if ref else "lira-offline-per-class")
    assert got["per-example"] > got["per-class"] + 0.03, got


def test_attacks_never_depend_on_target_membership() -> None:
    # swapping target members and non-members must leave every fitted attack unchanged (same thresholds,
    # same selected hyper-parameters, AUC mirrored): only the metrics see target membership
    sp = make_splits((150, 150), (200, 200), n_shadows=1, seed=6)
    t, s = synthetic_outputs(sp, {"original": V(0.5, 0.0), "int8": V(1.5, 0.0)}, seed=6)
    kw = dict(families=["NR", "SR"], baselines=["rmia", "lira"], nr_variants=["int8"], bootstrap=0, seed=6)
    a = run_attacks(sp, t, s, **kw)  # type: ignore[arg-type]
    swapped = replace(sp, target_in=sp.target_out, target_out=sp.target_in)
    b = run_attacks(swapped, t, s, **kw)  # type: ignore[arg-type]
    for x, z in zip(a, b):
        assert (x.method, x.variant) == (z.method, z.variant)
        assert x.model_extra["threshold"] == pytest.approx(z.model_extra["threshold"], rel=1e-12, abs=1e-12)
        assert x.model_extra.get("selected") == z.model_extra.get("selected")
        assert z.auc == pytest.approx(1.0 - x.auc, abs=1e-12)


def test_deterministic_for_a_seed() -> None:
    sp = make_splits((100, 100), (150, 150), n_shadows=1, seed=7)
    t, s = synthetic_outputs(sp, {"original": V(1.0, 0.0), "int8": V(1.5, 0.0), "fp16": V(1.2, 0.0)}, seed=7)
    kw = dict(families=["NR", "MR"], baselines=["lira"], nr_variants=["int8"], bootstrap=20, seed=11)
    one = run_attacks(sp, t, s, **kw)  # type: ignore[arg-type]
    two = run_attacks(sp, t, s, **kw)  # type: ignore[arg-type]
    assert {r.family for r in one} == {"NR", "MR", "baseline"}
    assert [r.model_dump() for r in one] == [r.model_dump() for r in two]


# ----------------------------------------------------------------------------- estimators on plain arrays


def test_shadow_split_is_stratified_and_disjoint() -> None:
    y = np.r_[np.ones(70), np.zeros(30)].astype(int)
    fit, val = shadow_split(y, 0.3, seed=0)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 100
    assert y[val].sum() == 21 and (y[val] == 0).sum() == 9
    assert np.array_equal(shadow_split(y, 0.3, 0)[1], val)


def test_threshold_attack_fits_per_class_thresholds_for_decisions_only() -> None:
    # class 0: members have entropy < 1; class 1: members have entropy < 3 -> one global threshold cannot do both
    labels = np.array([0] * 4 + [1] * 4)
    ent = np.array([0.5, 0.8, 1.5, 2.0, 2.5, 2.8, 3.5, 4.0])
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    att = ThresholdAttack(2).fit(ent, labels, y)
    assert 0.8 < att.thresholds_[0] < 1.5 and 2.8 < att.thresholds_[1] < 3.5
    assert np.array_equal(att.decide(ent, labels), y.astype(bool))
    assert np.array_equal(att.score(ent), -ent)  # the ranking is the raw signal's, no per-class offsets


def test_threshold_attack_auc_is_the_raw_signal_auc() -> None:
    # CompLeak / Song & Mittal: AUC and TPR rank the raw signal; per-class thresholds only for balanced accuracy
    sp = make_splits((300, 300), (300, 300), n_shadows=1, seed=12)
    t, s = synthetic_outputs(sp, {"original": V(0.8, 0.0, noise=0.6)}, seed=12)
    rows = run_attacks(sp, t, s, families=["NR"], baselines=[], bootstrap=0, seed=12, return_scores=True)
    by = {r.method: r for r in rows[0]}
    lp = log_posterior(t["original"].rows(sp.candidates), "logits")
    y = np.r_[np.ones(300), np.zeros(300)]
    labels = sp.labels[sp.candidates]
    assert by["entropy-threshold"].auc == pytest.approx(roc_auc_score(y, -entropy(lp)), abs=1e-12)
    assert by["mentropy-threshold"].auc == pytest.approx(roc_auc_score(y, -modified_entropy(lp, labels)), abs=1e-12)
    sc = rows[1][by["entropy-threshold"].model_extra["score_key"]]
    assert np.array_equal(sc, -entropy(lp))


def test_unsorted_and_sorted_nr_are_different_attacks() -> None:
    # the paper's NR (train_based_1/2) uses the raw posterior in class order; ML-Leaks sorts it
    sp = make_splits((300, 300), (400, 400), n_shadows=1, seed=13)
    t, s = synthetic_outputs(sp, {"original": V(1.5, 0.0)}, seed=13)
    rows, scores = run_attacks(sp, t, s, families=["NR"], baselines=[], bootstrap=0, seed=13, return_scores=True)
    by = {r.method: r for r in rows}
    for model in ("lr", "rf"):
        for feat in ("posterior", "posterior-label"):
            a, b = by[f"{feat}-{model}"], by[f"sorted-{feat}-{model}"]
            assert not np.allclose(scores[a.model_extra["score_key"]], scores[b.model_extra["score_key"]])
    # a linear model cannot read the confidence from an unsorted posterior without the label; sorted, it can
    assert by["sorted-posterior-lr"].auc > by["posterior-lr"].auc + 0.1
    assert by["posterior-label-rf"].auc > by["posterior-lr"].auc + 0.1  # a forest can pair p_j with the label


@pytest.mark.parametrize("model", ["lr", "rf", "mlp"])
def test_learned_attack_on_arrays(model: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    X = rng.normal(size=(600, 5)) + y[:, None] * 0.8
    att = LearnedAttack(model, seed=0).fit(X, y)
    Xt = rng.normal(size=(400, 5)) + np.r_[np.ones(200), np.zeros(200)][:, None] * 0.8
    s = att.score(Xt)
    assert s.shape == (400,) and s[:200].mean() > s[200:].mean()
    assert 0.0 <= att.threshold_ <= 1.0 and att.val_auc_ > 0.7


# ----------------------------------------------------------------------------- malformed inputs


def _small():  # type: ignore[no-untyped-def]
    sp = make_splits((50, 50), (50, 50), n_shadows=1, seed=8)
    t, s = synthetic_outputs(sp, {"original": V(1.0, 0.0), "int8": V(1.0, 0.0)}, seed=8)
    return sp, t, s


def _one_line_error(match: str, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ContractError, match=match) as exc:
        run_attacks(*args, bootstrap=0, **kw)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_nan_outputs_name_the_file() -> None:
    sp, t, s = _small()
    bad = t["int8"].values.copy()
    bad[3, 1] = np.nan
    t["int8"] = OutputBatch(t["int8"].index, bad, "logits", "outputs/local/tf-target-int8.tflite.npz")
    _one_line_error(r"^outputs/local/tf-target-int8\.tflite\.npz: 1 rows of logits contain NaN", sp, t, s)


def test_wrong_class_count_between_variants_names_the_file() -> None:
    sp, t, s = _small()
    t["int8"] = OutputBatch(t["int8"].index, t["int8"].values[:, :7], "logits", "out/int8.npz")
    _one_line_error(r"^out/int8\.npz: 7 classes but .* has 10; all variants must share classes", sp, t, s)


def test_index_outside_labels_names_the_file() -> None:
    sp, t, s = _small()
    b = s["int8"][0]
    idx = np.r_[b.index, [10_000]]
    s["int8"] = [OutputBatch(idx, np.vstack([b.values, b.values[:1]]), "logits", "out/shadow-int8.npz")]
    _one_line_error(r"^out/shadow-int8\.npz: index has example ids outside \[0, 200\)", sp, t, s)


def test_missing_rows_and_missing_shadow_outputs() -> None:
    sp, t, s = _small()
    b = t["original"]
    t["original"] = OutputBatch(b.index[5:], b.values[5:], "logits", "out/orig.npz")
    _one_line_error(r"^out/orig\.npz: 5 required example ids missing", sp, t, s)
    sp, t, s = _small()
    del s["int8"]
    _one_line_error(r"^variant 'int8': no shadow-model outputs given", sp, t, s)


def test_overlapping_splits_are_refused() -> None:
    sp, t, s = _small()
    bad = Splits(sp.labels, sp.target_in, sp.target_out, [np.r_[sp.shadow_in[0], sp.target_in[:1]]], sp.shadow_out)
    _one_line_error(r"shadow split 0 overlaps the target split", bad, t, s)
