"""CompLeak's attack models as scikit-learn style estimators: ``fit`` on shadow data, ``score`` on target data.

Arrays in, arrays out; no files. Scores are float64 [n], higher = more likely a member; each fitted estimator
also carries ``threshold_``, the decision threshold chosen on shadow data (``member iff score >= threshold_``).

Model selection (hyper-parameters, epochs) and the threshold use a held-out part of the SHADOW data only:
:func:`shadow_split` splits the shadow examples, stratified by membership, into a fit part and a validation part;
the split depends only on the membership vector and the seed, so every estimator of one run sees the same split
(the MR stacking relies on this).

- :class:`ThresholdAttack` -- a "lower means member" signal (entropy, modified entropy) ranked as it is; per-class
  thresholds for the hard decision only.
- :class:`LearnedAttack` -- logistic regression, random forest or MLP on a feature matrix (NR sorted posterior
  features, SR1/SR2 features); hyper-parameters chosen by validation AUC.
- :class:`AuthorsAttack` -- the CompLeak authors' LR / RF exactly as their code fits it (all shadow examples, fixed
  hyper-parameters, no selection): the paper's NR rows on the raw posterior.
- :class:`FusionAttack` -- MR's two-branch MLP (PyTorch): one branch over per-variant membership probabilities
  (or posteriors), one over per-variant losses; epochs chosen by validation AUC.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from compleak.metrics import best_threshold


def shadow_split(y: np.ndarray, val_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of shadow examples into (fit indices, validation indices), stratified by ``y``.

    ``y`` int [n] (1 member, 0 non-member). Each class keeps at least one example on each side.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for cls in (0, 1):
        idx = np.nonzero(y == cls)[0]
        idx = idx[rng.permutation(len(idx))]
        n_val = min(max(1, int(round(len(idx) * val_fraction))), max(len(idx) - 1, 1))
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _require_both(y: np.ndarray, what: str) -> None:
    if not (np.any(y == 1) and np.any(y == 0)):
        raise ValueError(f"{what}: shadow data needs both members and non-members")


# --------------------------------------------------------------------------- threshold attacks


class ThresholdAttack:
    """Threshold attack on a signal that is LOWER for members (entropy, modified entropy), as in Song & Mittal
    (2021) and the CompLeak authors' code.

    The membership score is the raw signal negated, ``score = -signal``: the AUC and TPR@FPR rank examples by the
    signal itself. Per-class thresholds are used only for the hard decision (balanced accuracy, epsilon bound):
    ``fit`` picks, for every class ``c``, the threshold ``t_c`` maximising balanced accuracy of ``signal <= t_c`` on
    the shadow examples of that class (a class without both members and non-members in the shadow data falls
    back to the threshold fitted on all classes); :meth:`decide` returns ``signal <= t_label``. ``threshold_`` is
    the all-class threshold on the score scale (``-t_global``). Few parameters, so it is fitted on all shadow
    examples.
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def fit(self, signal: np.ndarray, labels: np.ndarray, y: np.ndarray) -> "ThresholdAttack":
        """signal float [n], labels int [n], y int [n] (1 = member) of the shadow examples."""
        signal, labels, y = np.asarray(signal, np.float64), np.asarray(labels), np.asarray(y)
        _require_both(y, "threshold attack")
        global_t = -best_threshold(y, -signal)
        self.thresholds_ = np.full(self.n_classes, global_t)
        for c in range(self.n_classes):
            m = labels == c
            if np.any(y[m] == 1) and np.any(y[m] == 0):
                self.thresholds_[c] = -best_threshold(y[m], -signal[m])
        self.threshold_ = -float(global_t)
        self.selected_: dict[str, Any] = {"per_class_thresholds": [round(float(t), 6) for t in self.thresholds_]}
        return self

    def score(self, signal: np.ndarray) -> np.ndarray:
        """Membership score float64 [n]: ``-signal`` (the raw signal's ranking)."""
        return -np.asarray(signal, np.float64)

    def decide(self, signal: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Hard decisions bool [n] with the per-class thresholds: ``signal <= t_label``."""
        return np.asarray(signal, np.float64) <= self.thresholds_[np.asarray(labels, dtype=np.int64)]


# --------------------------------------------------------------------------- learned attacks


def _candidates(model: str, seed: int, n_jobs: int, n_fit: int) -> list[tuple[dict[str, Any], Any]]:
    """(hyper-parameters, unfitted scikit-learn estimator) pairs searched for ``model``."""
    if model == "lr":
        return [
            ({"C": c}, make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)))
            for c in (0.01, 1.0)
        ]
    if model == "rf":
        return [
            (
                {"max_depth": d, "min_samples_leaf": 5, "n_estimators": 32, "max_samples": 0.3},
                RandomForestClassifier(
                    n_estimators=32, max_depth=d, min_samples_leaf=5, max_samples=0.3, random_state=seed, n_jobs=n_jobs
                ),
            )
            for d in (6, 10)
        ]
    if model == "mlp":
        return [
            (
                {"hidden": 64, "alpha": a},
                make_pipeline(
                    StandardScaler(),
                    MLPClassifier(
                        hidden_layer_sizes=(64,),
                        alpha=a,
                        batch_size=min(256, max(1, n_fit // 4)),  # also fits the half-size cross-fitting models
                        max_iter=100,
                        early_stopping=True,
                        n_iter_no_change=5,
                        random_state=seed,
                    ),
                ),
            )
            for a in (1e-3,)  # epochs are selected by early stopping on a held-out part of the fit data
        ]
    raise ValueError(f"unknown attack model {model!r}; use lr, rf or mlp")


def _serial_predict(est: Any) -> None:
    """Predict with one job: a forest's multi-threaded ``predict_proba`` sums tree votes in a varying order, which
    makes scores differ in the last bit from run to run. Fitting stays parallel."""
    if isinstance(est, RandomForestClassifier):
        est.set_params(n_jobs=1)


class LearnedAttack:
    """A learned attack model (``model`` = ``lr`` | ``rf`` | ``mlp``) on features X float [n, d].

    ``fit(X, y)`` trains every candidate hyper-parameter setting on the fit part of :func:`shadow_split`, keeps
    the one with the best validation AUC, and chooses ``threshold_`` on the validation scores. ``score(X)`` is
    the predicted membership probability float64 [n].
    """

    def __init__(self, model: str = "lr", seed: int = 0, val_fraction: float = 0.3, n_jobs: int = -1) -> None:
        self.model = model
        self.seed = seed
        self.val_fraction = val_fraction
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LearnedAttack":
        X, y = np.asarray(X, np.float64), np.asarray(y).astype(np.int64)
        _require_both(y, f"{self.model} attack")
        self.fit_idx_, self.val_idx_ = shadow_split(y, self.val_fraction, self.seed)
        best = None
        for params, est in _candidates(self.model, self.seed, self.n_jobs, len(self.fit_idx_)):
            est.fit(X[self.fit_idx_], y[self.fit_idx_])
            _serial_predict(est)
            s = est.predict_proba(X[self.val_idx_])[:, 1]
            auc = float(roc_auc_score(y[self.val_idx_], s))
            if best is None or auc > best[0] + 1e-12:
                best = (auc, params, est, s)
        assert best is not None
        self.val_auc_, self.selected_, self.estimator_, val_scores = best
        self.threshold_ = best_threshold(y[self.val_idx_], val_scores)
        self._val_scores = val_scores
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.estimator_.predict_proba(np.asarray(X, np.float64))[:, 1].astype(np.float64)

    def out_of_sample_scores(self, X: np.ndarray, y: np.ndarray, n_folds: int = 2) -> np.ndarray:
        """Scores float64 [n] for the SHADOW examples the estimator was fitted on, each from a model that did
        not see that example: validation rows from the fitted model, fit rows by ``n_folds``-fold cross-fitting
        of the selected hyper-parameters. Used to train MR's fusion model without overfitted inputs."""
        X, y = np.asarray(X, np.float64), np.asarray(y).astype(np.int64)
        out = np.empty(len(y), dtype=np.float64)
        out[self.val_idx_] = self._val_scores
        rng = np.random.default_rng(self.seed + 1)
        fit_idx = self.fit_idx_[rng.permutation(len(self.fit_idx_))]
        folds = np.array_split(fit_idx, n_folds)
        for f, held in enumerate(folds):
            train = np.concatenate([g for i, g in enumerate(folds) if i != f])
            est = clone(self.estimator_)
            if isinstance(est, RandomForestClassifier):
                est.set_params(n_jobs=self.n_jobs)
            est.fit(X[train], y[train])
            _serial_predict(est)
            out[held] = est.predict_proba(X[held])[:, 1]
        return out


class AuthorsAttack:
    """The CompLeak authors' learned attack model, exactly as their code trains and scores it (``model`` = ``lr`` |
    ``rf``): the paper's NR rows ``posterior-lr`` / ``posterior-rf`` / ``posterior-label-lr`` /
    ``posterior-label-rf`` and SR rows ``sr1-lr`` / ``sr1-rf`` / ``sr2-lr`` / ``sr2-rf``. Source:
    hhhh384/CompLeak-Deep-Learning-Model-Compression-Exacerbates-Privacy-Leakage,
    ``CompLeak/attack/attack_model.py`` (classes ``LR``, ``RF``) driven by ``CompLeak/attack/attack_utils.py``
    (``Attack.train_attack_model`` / ``test_attack_model``).

    - No model selection, no held-out split: one model is trained on ALL shadow examples, rows ordered as the
      authors' shadow table (every member, then every non-member, each in the given order; the forest's bootstrap
      and the float sums depend on that order).
    - ``lr``: ``StandardScaler`` fitted on the shadow features, then ``LogisticRegression(random_state=0,
      solver="lbfgs", max_iter=400)`` (C = 1, L2, no class weights) on the scaled features; ``score(X)`` is
      ``predict_proba`` of the target features scaled with the SHADOW scaler (what ``LR.test_model_auc`` ranks).
    - ``rf``: ``RandomForestClassifier(random_state=0, n_estimators=500, min_samples_leaf=30)`` on the unscaled
      features; ``score(X)`` is its ``predict_proba`` (single-threaded, so bit-reproducible).
    - The hard decision is the model's own ``predict`` (:meth:`decide`; member iff p > 0.5), as the authors'
      accuracy; ``threshold_`` = 0.5 names it.

    ``random_state`` is the authors' fixed 0, independent of the run's seed. ``n_jobs`` only parallelises the
    forest's fit (the trees do not depend on it).
    """

    THRESHOLD = 0.5

    def __init__(self, model: str = "lr", n_jobs: int = -1) -> None:
        if model not in ("lr", "rf"):
            raise ValueError(f"unknown authors' attack model {model!r}; use lr or rf")
        self.model = model
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray, y: np.ndarray) -> AuthorsAttack:
        X, y = np.asarray(X, np.float64), np.asarray(y).astype(np.int64)
        _require_both(y, f"authors' {self.model} attack")
        order = np.argsort(1 - y, kind="stable")  # members first, then non-members (the authors' shadow table)
        Xo, yo = X[order], y[order]
        if self.model == "lr":
            self.scaler_: StandardScaler | None = StandardScaler().fit(Xo)
            est: Any = LogisticRegression(random_state=0, solver="lbfgs", max_iter=400)
            est.fit(self.scaler_.transform(Xo), yo)
            self.selected_: dict[str, Any] = {"C": 1.0, "solver": "lbfgs", "max_iter": 400, "scaler": "shadow"}
        else:
            self.scaler_ = None
            est = RandomForestClassifier(random_state=0, n_estimators=500, min_samples_leaf=30, n_jobs=self.n_jobs)
            est.fit(Xo, yo)
            _serial_predict(est)
            self.selected_ = {"n_estimators": 500, "min_samples_leaf": 30}
        self.estimator_ = est
        self.threshold_ = self.THRESHOLD
        return self

    def _input(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        return X if self.scaler_ is None else self.scaler_.transform(X)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Membership probability float64 [n] (``predict_proba[:, 1]``; LR on shadow-scaled features)."""
        return self.estimator_.predict_proba(self._input(X))[:, 1].astype(np.float64)

    def decide(self, X: np.ndarray) -> np.ndarray:
        """The model's own decisions bool [n] (``predict``), as the authors' attack accuracy."""
        return np.asarray(self.estimator_.predict(self._input(X))) == 1


# --------------------------------------------------------------------------- MR fusion


class FusionAttack:
    """MR's two-branch fusion MLP (PyTorch).

    Branch A takes ``A`` float [n, dA] (per-variant membership probabilities, or per-variant posteriors for MR
    without the original), branch B takes ``B`` float [n, dB] (per-variant losses, ``log1p``-transformed); each
    branch is Linear-ReLU of width ``hidden``, the concatenation goes through Linear-ReLU-Linear to one logit.
    Inputs are standardised with statistics of the shadow fit part. Trained with Adam on binary cross-entropy;
    the epoch with the best validation AUC (shadow validation part) is kept, and ``threshold_`` is chosen there.
    Deterministic for a given ``seed`` (the global torch RNG is left untouched).
    """

    def __init__(
        self,
        hidden: int = 32,
        max_epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 512,
        seed: int = 0,
        val_fraction: float = 0.3,
    ) -> None:
        self.hidden = hidden
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction = val_fraction

    def _prep(self, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        A = np.asarray(A, np.float64)
        B = np.log1p(np.maximum(np.asarray(B, np.float64), 0.0))
        return (A - self.mu_a_) / self.sd_a_, (B - self.mu_b_) / self.sd_b_

    def fit(self, A: np.ndarray, B: np.ndarray, y: np.ndarray) -> "FusionAttack":
        import torch
        from torch import nn

        y = np.asarray(y).astype(np.int64)
        _require_both(y, "MR fusion attack")
        fit_idx, val_idx = shadow_split(y, self.val_fraction, self.seed)
        A0, B0 = np.asarray(A, np.float64), np.log1p(np.maximum(np.asarray(B, np.float64), 0.0))
        self.mu_a_, self.sd_a_ = A0[fit_idx].mean(0), A0[fit_idx].std(0) + 1e-9
        self.mu_b_, self.sd_b_ = B0[fit_idx].mean(0), B0[fit_idx].std(0) + 1e-9
        Az, Bz = self._prep(A, B)

        with _one_torch_thread(torch):
            self._train(torch, nn, Az, Bz, y, fit_idx, val_idx)
        return self

    def _train(self, torch, nn, Az, Bz, y, fit_idx, val_idx) -> None:  # type: ignore[no-untyped-def]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _TwoBranch(Az.shape[1], Bz.shape[1], self.hidden)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            lossf = nn.BCEWithLogitsLoss()
            ta = torch.as_tensor(Az, dtype=torch.float32)
            tb = torch.as_tensor(Bz, dtype=torch.float32)
            ty = torch.as_tensor(y, dtype=torch.float32)
            gen = torch.Generator().manual_seed(self.seed)
            tfit = torch.as_tensor(fit_idx)
            best: tuple[float, int, dict, np.ndarray] | None = None
            for epoch in range(self.max_epochs):
                net.train()
                perm = tfit[torch.randperm(len(tfit), generator=gen)]
                for start in range(0, len(perm), self.batch_size):
                    b = perm[start : start + self.batch_size]
                    opt.zero_grad()
                    lossf(net(ta[b], tb[b]), ty[b]).backward()
                    opt.step()
                net.eval()
                with torch.no_grad():
                    s = net(ta[val_idx], tb[val_idx]).double().numpy()
                auc = float(roc_auc_score(y[val_idx], s))
                if best is None or auc > best[0] + 1e-12:
                    best = (auc, epoch + 1, copy.deepcopy(net.state_dict()), s)
            assert best is not None
            net.load_state_dict(best[2])
        self.net_ = net
        self.val_auc_ = best[0]
        self.selected_ = {"epochs": best[1], "hidden": self.hidden, "lr": self.lr}
        self.threshold_ = best_threshold(y[val_idx], best[3])

    def score(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """Membership score float64 [n] (the fusion logit)."""
        import torch

        Az, Bz = self._prep(A, B)
        with _one_torch_thread(torch), torch.no_grad():
            out = self.net_(torch.as_tensor(Az, dtype=torch.float32), torch.as_tensor(Bz, dtype=torch.float32))
        return out.double().numpy()


@contextlib.contextmanager
def _one_torch_thread(torch):  # type: ignore[no-untyped-def]
    """Run torch single-threaded, restoring the thread count after: the fusion net's matrices are tiny, and on a
    busy machine several intra-op threads make it 10-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _TwoBranch(d_a: int, d_b: int, hidden: int):  # noqa: N802 - a module factory, torch imported lazily
    from torch import cat, nn

    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Linear(d_a, hidden), nn.ReLU())
            self.b = nn.Sequential(nn.Linear(d_b, hidden), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def forward(self, a, b):  # type: ignore[no-untyped-def]
            return self.head(cat([self.a(a), self.b(b)], dim=1)).squeeze(1)

    return TwoBranch()
