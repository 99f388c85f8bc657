"""Online/offline LiRA and RMIA with many reference models, SAMIA, and fit-once/score-many, on simulated outputs
with known membership (compleak.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from compleak.baselines import RMIA, LiRA, calibrate_rmia_a
from compleak.engine import AttackConfig, fit_attacks, run_attacks
from compleak.synthetic import VariantSpec as V
from compleak.synthetic import make_online_splits, make_splits, synthetic_outputs, synthetic_perturbed
from rundir import ContractError, OutputBatch


@pytest.fixture(scope="module")
def online_rows():  # type: ignore[no-untyped-def]
    sp = make_online_splits((300, 300), n_extra=200, n_references=8, n_population=400, seed=0)
    t, s = synthetic_outputs(sp, {"original": V(1.2, 0.0)}, seed=0)
    return sp, run_attacks(sp, t, s, families=[], baselines=["lira", "rmia"], bootstrap=50, seed=0)


def test_online_splits_put_each_candidate_in_about_half_the_references(online_rows) -> None:  # type: ignore
    sp, _ = online_rows
    ins = sp.reference_membership(sp.candidates)
    assert ins.shape == (8, 600)
    frac = ins.mean(axis=0)
    assert 0.4 < frac.mean() < 0.6 and ins.any(axis=0).mean() > 0.95
    assert not np.isin(sp.population, np.concatenate(sp.shadow_in)).any()


def test_online_lira_and_rmia_recover_known_leakage(online_rows) -> None:  # type: ignore[no-untyped-def]
    _, rows = online_rows
    by = {r.method: r for r in rows}
    assert set(by) == {"lira-online", "lira-offline", "rmia-online", "rmia-offline"}
    for r in rows:
        assert r.auc > 0.62 and r.auc_ci[0] > 0.55, (r.method, r.auc, r.auc_ci)
        assert r.model_extra["reference"] == "per-example" and r.model_extra["n_reference_models"] == 8
        assert r.model_extra["threshold_source"] == "reference 0 as pseudo-target"
        assert 0.55 < r.balanced_accuracy  # a reference-side threshold, not a degenerate per-class one
    assert by["lira-online"].model_extra["variance"] == "global"  # K = 8 < 64
    rmia = by["rmia-offline"].model_extra
    assert rmia["population"] == "splits.population" and rmia["n_population"] == 400
    assert rmia["a_source"].startswith("reference 0 as pseudo-target") and 0.0 <= rmia["a"] <= 1.0


def test_no_leakage_gives_chance_for_online_attacks() -> None:
    sp = make_online_splits((1000, 1000), n_extra=0, n_references=6, n_population=500, seed=1)
    t, s = synthetic_outputs(sp, {"original": V(0.0, 0.0)}, seed=1)
    rows = run_attacks(sp, t, s, families=[], baselines=["lira", "rmia"], bootstrap=100, seed=1)
    assert len(rows) == 4
    assert sum(r.auc_ci[0] <= 0.5 <= r.auc_ci[1] for r in rows) >= 3, [(r.method, r.auc_ci) for r in rows]
    for r in rows:
        assert abs(r.auc - 0.5) < 0.05, (r.method, r.auc)


def test_one_reference_offline_rows_are_named_for_it() -> None:
    sp = make_splits((200, 200), (200, 200), n_shadows=1, seed=2, n_population=200)
    t, s = synthetic_outputs(sp, {"original": V(1.0, 0.0)}, seed=2, reference_on_target=True)
    rows = run_attacks(sp, t, s, families=[], baselines=["lira", "rmia"], bootstrap=0, seed=2)
    assert [r.method for r in rows] == ["lira-offline-1ref", "rmia-offline-1ref"]
    assert rows[1].model_extra["a"] == 0.5 and rows[1].model_extra["a_source"].startswith("default")
    assert all(r.model_extra["threshold_source"] == "shadow, per class" for r in rows)


# ----------------------------------------------------------------------------- the estimators on arrays


def test_lira_online_is_the_gaussian_likelihood_ratio() -> None:
    rng = np.random.default_rng(3)
    K, n = 16, 50
    ins = np.zeros((K, n), bool)
    ins[: K // 2] = True
    ins = np.take_along_axis(ins, np.argsort(rng.random((K, n)), axis=0), axis=0)
    phi = rng.normal(size=(K, n)) + 2.0 * ins
    att = LiRA(online=True).fit(phi, ins, ~ins)
    mu_in = np.array([phi[ins[:, j], j].mean() for j in range(n)])
    mu_out = np.array([phi[~ins[:, j], j].mean() for j in range(n)])
    r_in = np.concatenate([phi[ins[:, j], j] - mu_in[j] for j in range(n)])
    r_out = np.concatenate([phi[~ins[:, j], j] - mu_out[j] for j in range(n)])
    s_in = np.sqrt((r_in**2).sum() / (len(r_in) - n))  # pooled, unbiased per example
    s_out = np.sqrt((r_out**2).sum() / (len(r_out) - n))
    x = rng.normal(size=n)
    expected = norm.logpdf(x, mu_in, s_in) - norm.logpdf(x, mu_out, s_out)
    np.testing.assert_allclose(att.score(x), expected, rtol=1e-10)
    assert att.variance_ == "global"
    off = LiRA(online=False).fit(phi, ins, ~ins)
    np.testing.assert_allclose(off.score(x), norm.logcdf((x - mu_out) / s_out), rtol=1e-10)
    many = LiRA(online=True).fit(np.tile(phi, (4, 1)), np.tile(ins, (4, 1)), np.tile(~ins, (4, 1)))
    assert many.variance_ == "per-example"  # K = 64


def test_rmia_score_hand_computed() -> None:
    # 2 references on 2 candidates and 3 population examples
    py_x = np.array([[0.8, 0.2], [0.4, 0.6]])
    py_z = np.array([[0.5, 0.1, 0.9], [0.5, 0.3, 0.7]])
    ins_x = np.array([[True, False], [False, True]])
    ins_z = np.zeros((2, 3), bool)
    on = RMIA(online=True).fit(py_x, ins_x, ~ins_x, py_z, ins_z, ~ins_z)
    np.testing.assert_allclose(on.pr_x_, [0.6, 0.4])
    np.testing.assert_allclose(on.pr_z_, [0.5, 0.2, 0.8])
    target_x, target_z = np.array([0.9, 0.2]), np.array([0.5, 0.2, 0.8])  # ratios: x 1.5, 0.5; z 1, 1, 1
    np.testing.assert_allclose(on.score(target_x, target_z), [1.0, 0.0])
    off = RMIA(online=False, a=0.5).fit(py_x, ins_x, ~ins_x, py_z, ins_z, ~ins_z)
    # offline: OUT references only -> x0: 0.4, x1: 0.2; Pr = 0.75 * mean_out + 0.25
    np.testing.assert_allclose(off.pr_x_, [0.75 * 0.4 + 0.25, 0.75 * 0.2 + 0.25])
    assert calibrate_rmia_a(py_x[:1], ins_x[:1], ~ins_x[:1], py_z[:1], ins_z[:1], ~ins_z[:1]) is None


# ----------------------------------------------------------------------------- SAMIA


def test_samia_recovers_sensitivity_leakage_the_posterior_does_not_carry() -> None:
    sp = make_splits((300, 300), (400, 400), n_shadows=1, seed=4)
    variants = {"original": V(0.0, 0.0, member_sensitivity=0.3, nonmember_sensitivity=2.0)}
    t, s = synthetic_outputs(sp, variants, seed=4)
    tp, spp = synthetic_perturbed(sp, variants, t, s, n_perturb=8, epsilon=0.05, seed=4)
    rows = run_attacks(sp, t, s, families=["NR"], baselines=[], bootstrap=50, seed=4,
                       shadow_perturbed=spp, target_perturbed=tp)
    by = {r.method: r for r in rows}
    assert by["samia"].auc > 0.8 and by["samia"].auc_ci[0] > 0.75, by["samia"].auc
    assert by["samia"].model_extra["selected"]["epsilon"] == pytest.approx(0.05)
    assert max(r.auc for r in rows if r.method != "samia") < 0.6  # the posterior alone carries no membership


def test_samia_without_perturbed_outputs_is_a_note_not_a_row() -> None:
    sp = make_splits((100, 100), (150, 150), n_shadows=1, seed=5)
    _, s = synthetic_outputs(sp, {"original": V(1.0, 0.0)}, seed=5)
    fitted = fit_attacks(sp, s, AttackConfig(families=("NR",), baselines=(), bootstrap=0))
    assert "samia" not in {m for _, m, _ in fitted.planned}
    assert any(n.startswith("samia original: no perturbed outputs") for n in fitted.notes)


# ----------------------------------------------------------------------------- fit once, score many


def test_fit_once_score_many_equals_fit_and_score() -> None:
    sp = make_online_splits((150, 150), n_extra=100, n_references=4, n_population=200, seed=6)
    variants = {"original": V(1.0, 0.0), "int8": V(1.5, 0.0), "prune-0.8": V(1.3, 0.0)}
    t, s = synthetic_outputs(sp, variants, seed=6)
    other = {v: OutputBatch(b.index, b.values * 1.05 + 0.01, b.kind) for v, b in t.items()}  # "another device"
    kw = {"families": ("NR", "SR", "MR"), "baselines": ("lira", "rmia"), "bootstrap": 20, "seed": 6}
    fitted = fit_attacks(sp, s, AttackConfig(**kw))  # type: ignore[arg-type]
    for target in (t, other):
        rows, scores = fitted.score(target)
        ref_rows, ref_scores = run_attacks(sp, target, s, return_scores=True, **kw)  # type: ignore[arg-type]
        assert [r.model_dump() for r in rows] == [r.model_dump() for r in ref_rows]
        assert list(scores) == list(ref_scores) == [r.model_extra["score_key"] for r in rows]
        for k in scores:
            assert scores[k].shape == (300,) and np.array_equal(scores[k], ref_scores[k])
            row = next(r for r in rows if r.model_extra["score_key"] == k)
            assert roc_auc_score(np.r_[np.ones(150), np.zeros(150)], scores[k]) == pytest.approx(row.auc)
    assert fitted.n_rows == len(rows)


def test_score_refuses_a_target_without_the_population() -> None:
    sp = make_online_splits((100, 100), n_extra=0, n_references=2, n_population=100, seed=7)
    t, s = synthetic_outputs(sp, {"original": V(1.0, 0.0)}, seed=7)
    b = t["original"]
    keep = np.isin(b.index, sp.candidates)
    t["original"] = OutputBatch(b.index[keep], b.values[keep], "logits", "out/target-original.npz")
    fitted = fit_attacks(sp, s, AttackConfig(families=(), baselines=("rmia",), bootstrap=0))
    with pytest.raises(ContractError, match=r"^out/target-original\.npz: the target was not queried on the population"):
        fitted.score(t)
