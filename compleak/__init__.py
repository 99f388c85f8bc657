"""CompLeak: membership-inference attacks on compressed models (NR, SR, MR; arXiv 2507.16872) plus RMIA and LiRA.

Pure NumPy / scikit-learn (PyTorch only for MR's fusion network); usable on plain arrays. See docs/attacks.md.

- signals: :func:`log_posterior`, :func:`posterior`, :func:`loss`, :func:`entropy`, :func:`modified_entropy`,
  :func:`scaled_logit`, :func:`sorted_features`
- estimators (fit on shadow, score target): :class:`ThresholdAttack`, :class:`LearnedAttack`, :class:`FusionAttack`,
  :class:`LiRAOffline`, :class:`RMIAOffline`
- metrics: :func:`evaluate`, :func:`roc_auc`, :func:`bootstrap_auc_ci`, :func:`tpr_at_fpr`, :func:`best_threshold`
- the data-level API: :func:`run_attacks` (splits + output batches -> result rows)
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module. Imported lazily (PEP 562) so that ``import compleak.rundir`` -- which every
# stage does -- stays light and does not pull in scikit-learn, SciPy or PyTorch.
_EXPORTS = {
    "FusionAttack": "attacks", "LearnedAttack": "attacks", "ThresholdAttack": "attacks", "shadow_split": "attacks",
    "LiRAOffline": "baselines", "RMIAOffline": "baselines",
    "run_attacks": "engine",
    "AttackMetrics": "metrics", "balanced_accuracy": "metrics", "best_threshold": "metrics",
    "bootstrap_auc_ci": "metrics", "evaluate": "metrics", "fpr_resolvable": "metrics", "roc_auc": "metrics",
    "tpr_at_fpr": "metrics",
    "ContractError": "rundir", "OutputBatch": "rundir", "ResultRow": "rundir", "Splits": "rundir",
    "entropy": "signals", "log_posterior": "signals", "loss": "signals", "modified_entropy": "signals",
    "one_hot": "signals", "posterior": "signals", "scaled_logit": "signals", "sorted_features": "signals",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"compleak.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'compleak' has no attribute {name!r}")


__all__ = [
    "AttackMetrics",
    "ContractError",
    "FusionAttack",
    "LearnedAttack",
    "LiRAOffline",
    "OutputBatch",
    "RMIAOffline",
    "ResultRow",
    "Splits",
    "ThresholdAttack",
    "balanced_accuracy",
    "best_threshold",
    "bootstrap_auc_ci",
    "entropy",
    "evaluate",
    "fpr_resolvable",
    "log_posterior",
    "loss",
    "modified_entropy",
    "one_hot",
    "posterior",
    "roc_auc",
    "run_attacks",
    "scaled_logit",
    "shadow_split",
    "sorted_features",
    "tpr_at_fpr",
]
