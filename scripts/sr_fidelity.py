"""SR fidelity: the paper's SR rows (``sr1-lr``, ``sr1-rf``, ``sr2-lr``, ``sr2-rf``) against the CompLeak authors'
procedure (CompLeakSR1 / CompLeakSR2 with their LR / RF), on fixed synthetic signals.

For each compressed variant and row it prints three AUCs (with the bootstrap 95 % CI of ``compleak.metrics``):

- ``authors``: the authors' procedure written out here with NumPy and scikit-learn directly, from
  hhhh384/CompLeak-Deep-Learning-Model-Compression-Exacerbates-Privacy-Leakage ``CompLeak/attack/attackers.py``
  (``MiaAttack.feature_prepare_SR``: every shadow member, then every shadow non-member),
  ``CompLeak/attack/attack_utils.py`` (``ConstructFeature.obtain_feature``: per row ``np.argsort`` of the original
  posterior, the original and compressed posteriors (and the one-hot label, SR2) in that order, concatenated;
  ``Attack``) and ``CompLeak/attack/attack_model.py`` (``LR``, ``RF``): all shadow examples, LR = shadow-fitted
  ``StandardScaler`` + ``LogisticRegression(random_state=0, solver="lbfgs", max_iter=400)``, RF =
  ``RandomForestClassifier(random_state=0, n_estimators=500, min_samples_leaf=30)``, score =
  ``predict_proba[:, 1]`` of the (shadow-scaled) target features;
- ``row``: the harness's row (``compleak.engine.run_attacks``), which must equal ``authors`` (max |diff| printed);
- ``before``: the procedure the rows used before (``compleak.attacks.LearnedAttack`` on the same features in the
  harness's pooled order: hyper-parameters selected on a 70/30 split of the shadow examples, fitted on the 70 %
  part), kept here only for the comparison.

Then the rows that did not change, for reference: ``sr1-mlp`` / ``sr2-mlp`` (this project's variant; the authors
have no MLP) and ``mr-fusion`` (which reads the model-selected sr2 models, not the paper rows), each checked equal
to what the former procedure computes.

Usage: ``.venv/bin/python scripts/sr_fidelity.py`` (a few minutes on two busy cores; deterministic).
docs/attacks.md quotes its output; tests/test_sr_paper.py checks the same equality on smaller signals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nr_fidelity import authors_fit_score, fmt_auc  # noqa: E402 (beside this script)

from compleak.attacks import LearnedAttack
from compleak.engine import run_attacks
from compleak.signals import log_posterior
from compleak.synthetic import VariantSpec, make_splits, synthetic_outputs

#: the fixed signals (those of scripts/nr_fidelity.py plus a second compressed variant, so MR runs): 4 classes, one
#: shadow model, 1000 + 1000 shadow and 1000 + 1000 target examples; members' true-class margin raised by 1.5
#: (original), 2.0 (int8), 1.2 with non-members' lowered by 0.3 (prune)
N_CLASSES, SEED = 4, 7
SPLITS = make_splits((1000, 1000), (1000, 1000), n_shadows=1, n_classes=N_CLASSES, seed=SEED)
VARIANTS = {"original": VariantSpec(1.5, 0.0, noise=0.5), "int8": VariantSpec(2.0, 0.0, noise=0.3),
            "prune": VariantSpec(1.2, -0.3, noise=0.4)}
COMPRESSED = ("int8", "prune")
ROWS = ("sr1-lr", "sr1-rf", "sr2-lr", "sr2-rf")
BOOTSTRAP = 200


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _harness_posterior(z: np.ndarray) -> np.ndarray:
    """The posterior the harness builds its features from (``exp`` of its log-softmax): what the former
    procedure's models were fitted on, so ``before`` is exactly the former row."""
    return np.exp(log_posterior(z, "logits"))


def features(orig: np.ndarray, comp: np.ndarray, labels: np.ndarray, with_label: bool) -> np.ndarray:
    """The authors' CompLeakSR1 / CompLeakSR2 features, row by row: sorted by the original's posterior."""
    onehot = np.eye(orig.shape[1])[labels]
    out = []
    for i in range(len(orig)):
        idx = np.argsort(orig[i])
        out.append(np.concatenate([orig[i, idx], comp[i, idx]] + ([onehot[i, idx]] if with_label else [])))
    return np.array(out)


def main() -> None:
    target, shadow = synthetic_outputs(SPLITS, VARIANTS, n_classes=N_CLASSES, seed=SEED)
    rows, scores = run_attacks(SPLITS, target, shadow, families=["SR", "MR"], baselines=[], bootstrap=BOOTSTRAP,
                               seed=0, return_scores=True)
    by = {(r.method, r.variant if isinstance(r.variant, str) else ",".join(r.variant)): r for r in rows}
    cand = SPLITS.candidates
    y_t = np.r_[np.ones(len(SPLITS.target_in)), np.zeros(len(SPLITS.target_out))].astype(int)
    s_in, s_out = SPLITS.shadow_in[0], SPLITS.shadow_out[0]
    lab = SPLITS.labels
    y_s = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))].astype(int)  # one shadow model: its members first
    print(f"signals: make_splits((1000, 1000), (1000, 1000), n_shadows=1, n_classes={N_CLASSES}, seed={SEED}); "
          f"variants {VARIANTS}")
    print(f"{'variant':8} {'row':7} {'before (LearnedAttack)':25} {'after (row)':25} {'authors':25} max|row-authors|")
    selected: dict[str, dict[str, LearnedAttack]] = {}
    for v in COMPRESSED:
        tables = {}
        for name, post in (("authors", _softmax), ("harness", _harness_posterior)):
            P = {w: (post(shadow[w][0].rows(np.concatenate([s_in, s_out]))), post(target[w].rows(cand)))
                 for w in ("original", v)}
            tables[name] = {with_label: (features(P["original"][0], P[v][0], lab[np.concatenate([s_in, s_out])],
                                                  with_label),
                                         features(P["original"][1], P[v][1], lab[cand], with_label))
                            for with_label in (False, True)}
        for method in ROWS + ("sr1-mlp", "sr2-mlp"):
            feat, model = method.split("-")
            with_label = feat == "sr2"
            row = by[(method, v)]
            mine = scores[row.model_extra["score_key"]]
            Xh, Xht = tables["harness"][with_label]
            before = LearnedAttack(model, seed=0).fit(Xh, y_s)
            if with_label:
                selected.setdefault(v, {})[model] = before
            if model == "mlp":  # unchanged: this project's variant
                same = np.array_equal(mine, before.score(Xht))
                print(f"{v:8} {method:7} {fmt_auc(y_t, mine):25} (unchanged, LearnedAttack: "
                      f"{'identical' if same else 'DIFFERS'})")
                continue
            X, Xt = tables["authors"][with_label]
            ref = authors_fit_score(X, y_s, Xt, model)
            aucs = " ".join(f"{fmt_auc(y_t, s):25}" for s in (before.score(Xht), mine, ref))
            print(f"{v:8} {method:7} {aucs} {np.max(np.abs(mine - ref)):.1e}")
    mr = by[("mr-fusion", ",".join(COMPRESSED))]
    chosen = {v: max(fits, key=lambda m: fits[m].val_auc_) for v, fits in selected.items()}
    ok = all(mr.model_extra["selected"]["sr2_models"][v]["model"] == m for v, m in chosen.items())
    print(f"mr-fusion {fmt_auc(y_t, scores[mr.model_extra['score_key']])} from the model-selected sr2 models {chosen} "
          f"({'as selected' if ok else 'NOT the selected models'})")


if __name__ == "__main__":
    main()
