"""The imported run's ``experiment.toml``: the base experiment with the imported data, split sizes, shadow
architecture and variants, written as TOML that reads back to the same :class:`~harness.config.Experiment`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config import Experiment
from harness.errors import HarnessError
from harness.importer.artifacts import TF_FORMATS, TORCH_FORMATS
from harness.importer.inputs import Inputs
from rundir import Splits, name_problem


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # JSON escapes are TOML escapes, except that TOML also forbids a raw DEL
        return json.dumps(v).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(prefix: str, table: dict[str, Any], out: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if v is not None and not isinstance(v, dict) and not _is_table_list(v)}
    if prefix and scalars:
        out.append(f"\n[{prefix}]")
    for k, v in scalars.items():
        out.append(f"{k} = {_toml_value(v)}")
    for k, v in table.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _toml_table(name, v, out)
        elif _is_table_list(v):
            for item in v:
                out.append(f"\n[[{name}]]")
                out.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv is not None)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def experiment_toml(exp: Experiment, header: str) -> str:
    """``exp`` as TOML text that :func:`harness.config.load_experiment` reads back to an equal Experiment."""
    lines = [f"# {ln}" for ln in header.splitlines()]
    _toml_table("", exp.model_dump(mode="json"), lines)
    text = "\n".join(lines) + "\n"
    if Experiment.model_validate(tomllib.loads(text)) != exp:  # never write a config that reads back differently
        raise HarnessError("internal: the run's experiment.toml did not round-trip; please report this")
    return text


def run_experiment(inp: Inputs, splits: Splits, arch: str, variants: list[tuple[str, str]]) -> Experiment:
    """The run's experiment.toml: ``inp.base`` with the imported data, the split sizes (and threat model,
    population) of ``splits``, the shadow ``arch`` and the (variant, format) ``variants`` of the targets."""
    base = inp.base
    tf_v = [v for v, f in variants if f in TF_FORMATS]
    torch_v = [v for v, f in variants if f in TORCH_FORMATS]
    torch_f = sorted({f for _, f in variants if f in TORCH_FORMATS})
    raw = base.model_dump(mode="json")
    run = Path(inp.req.run)
    if name_problem(run.name) is None:  # a run folder such as "rün" keeps the config's name instead
        raw["experiment"]["name"] = run.name
    raw["data"] = {"dataset": inp.spec, "data_dir": str(inp.data_dir) if inp.data_dir else None, "download": False,
                   "preprocess": inp.pre.model_dump(mode="json")}
    raw["splits"].update(
        target_in=len(splits.target_in),
        target_out=len(splits.target_out),
        shadow_in=max(1, max((len(a) for a in splits.shadow_in), default=1)),
        shadow_out=max(1, max((len(b) for b in splits.shadow_out), default=1)),
        n_shadows=max(1, len(splits.shadow_in)),
        pool=None,
        population=len(splits.population_ids),
    )
    raw["attack"].update(reference_models=max(1, len(splits.shadow_in)),
                         threat_model="online" if splits.online else "offline")
    raw["model"]["arch"] = arch
    raw["compress"]["tf"] = tf_v or base.compress.tf
    raw["compress"]["torch"] = torch_v or base.compress.torch
    raw["export"]["frameworks"] = [f for f, vs in (("tf", tf_v), ("torch", torch_v)) if vs] or base.export.frameworks
    if torch_f:
        raw["export"]["torch_formats"] = torch_f
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise HarnessError(f"the imported variants do not form a valid experiment: [{loc}] {err['msg']}") from None
