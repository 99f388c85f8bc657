"""``attacks/<device>/results.json``: one :class:`ResultRow` per attack result."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from rundir.errors import ContractError
from rundir.files import atomic_write_json, first_error, load_json
from rundir.vocabulary import RowFamily


class ResultRow(BaseModel):
    """One attack result row of ``attacks/<device>/results.json``."""

    model_config = ConfigDict(extra="allow")

    family: RowFamily
    method: str
    variant: str | list[str]
    auc: float
    balanced_accuracy: float
    tpr_at_fpr: dict[str, float | None]  # {"0.001": ..., "0.01": ...}; None when not resolvable
    auc_ci: list[float]
    n_members: int
    n_nonmembers: int


def save_results(path: Path, rows: list[ResultRow]) -> None:
    atomic_write_json(Path(path), [r.model_dump(mode="json") for r in rows])


def load_results(path: Path) -> list[ResultRow]:
    raw = load_json(path)
    if not isinstance(raw, list):
        raise ContractError(f"{path}: expected a JSON list of result rows")
    try:
        return [ResultRow.model_validate(r) for r in raw]
    except ValidationError as exc:
        raise ContractError(f"{path}: {first_error(exc)}") from None
