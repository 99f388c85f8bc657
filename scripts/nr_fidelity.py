"""NR fidelity: the paper's NR rows (``posterior-lr``, ``posterior-rf``, ``posterior-label-lr``,
``posterior-label-rf``) against the CompLeak authors' procedure, on fixed synthetic signals.

For each variant and row it prints three AUCs (with the bootstrap 95 % CI of ``compleak.metrics``):

- ``authors``: the authors' procedure written out here with scikit-learn directly, from
  hhhh384/CompLeak-Deep-Learning-Model-Compression-Exacerbates-Privacy-Leakage ``CompLeak/attack/attack_model.py``
  (``LR``, ``RF``) and ``CompLeak/attack/attack_utils.py`` (``Attack``): all shadow examples (members first),
  LR = shadow-fitted ``StandardScaler`` + ``LogisticRegression(random_state=0, solver="lbfgs", max_iter=400)``,
  RF = ``RandomForestClassifier(random_state=0, n_estimators=500, min_samples_leaf=30)``, score =
  ``predict_proba[:, 1]`` of the (shadow-scaled) target features;
- ``row``: the harness's row (``compleak.engine.run_attacks``), which must equal ``authors`` (max |diff| printed);
- ``before``: the procedure the rows used before (``compleak.attacks.LearnedAttack``: hyper-parameters selected
  on a 70/30 split of the shadow examples, fitted on the 70 % part), kept here only for the comparison.

Then, for ``posterior-lr``, the AUC of the standardised LR by ``C`` (0.01, 1) and training part (the 70 % fit part
of ``shadow_split``, or all shadow examples), and its largest |coefficient|: what moves the row.

Usage: ``.venv/bin/python scripts/nr_fidelity.py`` (about a minute; deterministic). docs/attacks.md quotes its
output; tests/test_nr_paper.py checks the same equality on smaller signals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compleak.attacks import LearnedAttack, shadow_split
from compleak.engine import run_attacks
from compleak.metrics import bootstrap_auc_ci, roc_auc
from compleak.synthetic import VariantSpec, make_splits, synthetic_outputs

#: the fixed signals: 4 classes, one shadow model, 1000 + 1000 shadow and 1000 + 1000 target examples; members'
#: true-class margin raised by 1.5 (original) / 2.0 (int8)
N_CLASSES, SEED = 4, 7
SPLITS = make_splits((1000, 1000), (1000, 1000), n_shadows=1, n_classes=N_CLASSES, seed=SEED)
VARIANTS = {"original": VariantSpec(1.5, 0.0, noise=0.5), "int8": VariantSpec(2.0, 0.0, noise=0.3)}
ROWS = ("posterior-lr", "posterior-rf", "posterior-label-lr", "posterior-label-rf")
BOOTSTRAP = 200


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def features(p: np.ndarray, labels: np.ndarray, with_label: bool) -> np.ndarray:
    """The authors' train_based_1 (posterior) / train_based_2 (posterior ⊕ one-hot label) features."""
    if not with_label:
        return p
    return np.concatenate([p, np.eye(p.shape[1])[labels]], axis=1)


def authors_fit_score(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, model: str) -> np.ndarray:
    """The authors' LR / RF on their shadow table (``X`` [n, d], ``y`` [n]), scoring the target ``Xt`` [m, d]."""
    if model == "lr":
        scaler = StandardScaler().fit(X)
        lr = LogisticRegression(random_state=0, solver="lbfgs", max_iter=400).fit(scaler.transform(X), y)
        return lr.predict_proba(scaler.transform(Xt))[:, 1]
    rf = RandomForestClassifier(random_state=0, n_estimators=500, min_samples_leaf=30).fit(X, y)
    return rf.predict_proba(Xt)[:, 1]


def authors_scores(Xs_in: np.ndarray, Xs_out: np.ndarray, Xt: np.ndarray, model: str) -> np.ndarray:
    """The authors' procedure: train on every shadow member then every shadow non-member, score the target."""
    X = np.concatenate([Xs_in, Xs_out])
    y = np.r_[np.ones(len(Xs_in)), np.zeros(len(Xs_out))].astype(int)
    return authors_fit_score(X, y, Xt, model)


def fmt_auc(y: np.ndarray, s: np.ndarray) -> str:
    """``AUC [lo, hi]`` with the 95 % bootstrap CI (BOOTSTRAP resamples, seed 0)."""
    lo, hi = bootstrap_auc_ci(y, s, BOOTSTRAP, 0)
    return f"{roc_auc(y, s):.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    target, shadow = synthetic_outputs(SPLITS, VARIANTS, n_classes=N_CLASSES, seed=SEED)
    rows, scores = run_attacks(SPLITS, target, shadow, families=["NR"], baselines=[], bootstrap=BOOTSTRAP, seed=0,
                               return_scores=True)
    by = {(r.method, r.variant): r for r in rows}
    cand = SPLITS.candidates
    y_t = np.r_[np.ones(len(SPLITS.target_in)), np.zeros(len(SPLITS.target_out))].astype(int)
    s_in, s_out = SPLITS.shadow_in[0], SPLITS.shadow_out[0]
    lab = SPLITS.labels
    print(f"signals: make_splits((1000, 1000), (1000, 1000), n_shadows=1, n_classes={N_CLASSES}, seed={SEED}); "
          f"variants {VARIANTS}")
    print(f"{'variant':9} {'row':19} {'before (LearnedAttack)':25} {'after (row)':25} {'authors':25} max|row-authors|")
    for v in VARIANTS:
        P_in = _softmax(shadow[v][0].rows(s_in))
        P_out = _softmax(shadow[v][0].rows(s_out))
        P_t = _softmax(target[v].rows(cand))
        for method in ROWS:
            with_label, model = method.startswith("posterior-label"), method.rsplit("-", 1)[1]
            Xin = features(P_in, lab[s_in], with_label)
            Xout = features(P_out, lab[s_out], with_label)
            Xt = features(P_t, lab[cand], with_label)
            ref = authors_scores(Xin, Xout, Xt, model)
            row = by[(method, v)]
            mine = scores[row.model_extra["score_key"]]
            ys = np.r_[np.ones(len(Xin)), np.zeros(len(Xout))].astype(int)
            before = LearnedAttack(model, seed=0).fit(np.concatenate([Xin, Xout]), ys).score(Xt)
            print(f"{v:9} {method:19} {fmt_auc(y_t, before):25} {fmt_auc(y_t, mine):25} {fmt_auc(y_t, ref):25} "
                  f"{np.max(np.abs(mine - ref)):.1e}")
    print("\nwhy posterior-lr moves: AUC of the standardised LR by C and training part (shadow_split's 70 % fit "
          "part, or all shadow examples), and the largest |coefficient| when trained on all")
    for v in VARIANTS:
        X = _softmax(np.concatenate([shadow[v][0].rows(s_in), shadow[v][0].rows(s_out)]))
        ys = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))].astype(int)
        Xt = _softmax(target[v].rows(cand))
        fit, _ = shadow_split(ys, 0.3, 0)
        cells = []
        for c in (0.01, 1.0):
            for part, idx in (("70 %", fit), ("all", np.arange(len(ys)))):
                m = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(X[idx], ys[idx])
                cells.append(f"C={c} {part}: {roc_auc(y_t, m.predict_proba(Xt)[:, 1]):.3f}")
                if part == "all" and c == 1.0:
                    coef = float(np.max(np.abs(m[-1].coef_)))
        print(f"{v:9} " + "; ".join(cells) + f"; max |coef| (C=1, all) {coef:.3f}")


if __name__ == "__main__":
    main()
