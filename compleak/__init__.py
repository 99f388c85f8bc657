"""CompLeak: membership-inference attacks on compressed models (NR, SR, MR; arXiv 2507.16872) plus SAMIA, and
online/offline RMIA and LiRA with many reference models.

Pure NumPy / scikit-learn (PyTorch only for MR's fusion network); usable on plain arrays. See docs/attacks.md.

- signals: :func:`log_posterior`, :func:`posterior`, :func:`loss`, :func:`entropy`, :func:`modified_entropy`,
  :func:`scaled_logit`, :func:`sorted_features`
- estimators (fit on shadow, score target): :class:`ThresholdAttack`, :class:`LearnedAttack`, :class:`FusionAttack`,
  :class:`LiRAOffline`, :class:`RMIAOffline`
- metrics: :func:`evaluate`, :func:`roc_auc`, :func:`bootstrap_auc_ci`, :func:`tpr_at_fpr`, :func:`best_threshold`
- a run's results as tables (pandas): :func:`load_results` (run -> one row per attack result),
  :func:`load_scores` (run, device -> one row per scored example), :func:`result_rows` (without pandas)
- the data-level API: :func:`fit_attacks` (splits + reference outputs -> :class:`FittedAttacks`),
  :meth:`FittedAttacks.score` (target outputs -> rows, per-example scores), :func:`run_attacks` (both)
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module (``compleak.<name>``, or the run-directory contract ``rundir`` the library stands on).
# Imported lazily (PEP 562) so that ``import compleak`` stays light and does not pull in scikit-learn, SciPy or
# PyTorch.
_EXPORTS = {
    "FusionAttack": "attacks", "LearnedAttack": "attacks", "ThresholdAttack": "attacks", "shadow_split": "attacks",
    "LiRA": "baselines", "LiRAOffline": "baselines", "RMIA": "baselines", "RMIAOffline": "baselines",
    "calibrate_rmia_a": "baselines",
    "AttackConfig": "engine", "FittedAttacks": "engine", "fit_attacks": "engine", "run_attacks": "engine",
    "AttackMetrics": "metrics", "balanced_accuracy": "metrics", "best_threshold": "metrics",
    "bootstrap_auc_ci": "metrics", "clopper_pearson": "metrics", "eps_lower_bound": "metrics", "evaluate": "metrics",
    "fpr_resolvable": "metrics", "per_class_auc": "metrics", "roc_auc": "metrics", "tpr_at_fpr": "metrics",
    "RunResult": "results", "load_all_scores": "results", "load_results": "results", "load_scores": "results",
    "result_rows": "results",
    "PerturbedBatch": "samia", "load_perturbed": "samia", "sensitivity": "samia",
    "ContractError": "rundir", "OutputBatch": "rundir", "ResultRow": "rundir", "Splits": "rundir",
    "entropy": "signals", "log_posterior": "signals", "loss": "signals", "modified_entropy": "signals",
    "one_hot": "signals", "posterior": "signals", "raw_features": "signals", "scaled_logit": "signals",
    "sorted_features": "signals",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if module == "rundir" else f"compleak.{module}"), name)
    raise AttributeError(f"module 'compleak' has no attribute {name!r}")


__all__ = [
    "AttackConfig",
    "AttackMetrics",
    "ContractError",
    "FittedAttacks",
    "FusionAttack",
    "LearnedAttack",
    "LiRA",
    "LiRAOffline",
    "OutputBatch",
    "PerturbedBatch",
    "RMIA",
    "RMIAOffline",
    "ResultRow",
    "RunResult",
    "Splits",
    "ThresholdAttack",
    "balanced_accuracy",
    "best_threshold",
    "bootstrap_auc_ci",
    "calibrate_rmia_a",
    "clopper_pearson",
    "entropy",
    "eps_lower_bound",
    "evaluate",
    "fit_attacks",
    "fpr_resolvable",
    "load_all_scores",
    "load_perturbed",
    "load_results",
    "load_scores",
    "log_posterior",
    "loss",
    "modified_entropy",
    "one_hot",
    "per_class_auc",
    "posterior",
    "raw_features",
    "result_rows",
    "roc_auc",
    "run_attacks",
    "scaled_logit",
    "sensitivity",
    "shadow_split",
    "sorted_features",
    "tpr_at_fpr",
]
