"""Host versus device: how far a device's raw outputs are from the host's, and what that does to the attacks.

For every artifact collected both on ``local`` (the host) and on a device, :func:`output_divergence` measures the
outputs themselves (max / mean absolute difference, argmax flips, KL divergence of the posteriors, fraction
bit-identical). :func:`leakage_deltas` subtracts the host's attack results from the device's, row by row. And
:func:`compare_device` runs the auditor's realistic case through the attack stage: the attack is trained on HOST
shadow outputs (what an auditor can produce without the phone) and applied to DEVICE target outputs.

Everything for one device goes to ``RUN/compare/<device>.json`` (atomic); definitions are in docs/report.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from compleak.signals import log_posterior
from harness.errors import HarnessError, esc
from harness.progress import stage_progress
from rundir import load_json
from rundir.errors import ContractError
from rundir.files import atomic_write_json, inputs_fingerprint
from rundir.layout import RunDir
from rundir.manifest import ArtifactRecord, Manifest
from rundir.names import device_dirname
from rundir.outputs import OutputBatch
from rundir.results import ResultRow, load_results

HOST = "local"
COMPARE_VERSION = 1


@dataclass
class OutputDivergence:
    """Divergence of one artifact's outputs on a device from the same artifact's outputs on the host.

    Computed over the example ids both collections contain (``n`` of them), row-aligned by example id.
    ``max_abs_diff`` / ``mean_abs_diff``: over every output value [n, C], in the outputs' own unit (logits or
    probabilities, dequantized). ``argmax_flips``: examples whose predicted class differs (count) and
    ``argmax_flip_rate`` = flips / n. ``kl_mean`` / ``kl_max``: KL(host posterior || device posterior) per example in
    nats (posteriors from ``compleak.signals.log_posterior``: softmax of logits, or the probabilities as given,
    floored at 1e-12 and renormalised).
    ``frac_bit_identical``: fraction of examples whose whole output row is bit-for-bit identical;
    ``frac_values_bit_identical``: the same over individual values.
    """

    artifact: str
    variant: str
    framework: str
    format: str
    role: str
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    argmax_flips: int
    argmax_flip_rate: float
    kl_mean: float
    kl_max: float
    frac_bit_identical: float
    frac_values_bit_identical: float


def divergence_arrays(host: np.ndarray, device: np.ndarray, kind: str) -> dict[str, float | int]:
    """The divergence metrics of two aligned output arrays, float32 [n, C] each (same example order)."""
    if host.shape != device.shape:
        raise HarnessError(f"host outputs have shape {host.shape} but device outputs {device.shape}; re-collect one")
    n = len(host)
    if n == 0:
        raise HarnessError("no example ids in common between host and device outputs; re-run collect")
    h32 = np.ascontiguousarray(host, dtype=np.float32)
    d32 = np.ascontiguousarray(device, dtype=np.float32)
    diff = np.abs(h32.astype(np.float64) - d32.astype(np.float64))
    same_bits = h32.view(np.uint32) == d32.view(np.uint32)
    flips = int(np.sum(h32.argmax(axis=1) != d32.argmax(axis=1)))
    lp_h, lp_d = log_posterior(h32, kind, "host outputs"), log_posterior(d32, kind, "device outputs")
    kl = np.sum(np.exp(lp_h) * (lp_h - lp_d), axis=1).clip(min=0.0)
    return {
        "n": n,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_flips": flips,
        "argmax_flip_rate": flips / n,
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "frac_bit_identical": float(np.mean(same_bits.all(axis=1))),
        "frac_values_bit_identical": float(np.mean(same_bits)),
    }


def output_divergence(host: OutputBatch, device: OutputBatch, artifact: Any) -> OutputDivergence:
    """Divergence of ``device`` from ``host`` for one ``artifact`` (an ArtifactRecord), on their common ids."""
    if host.kind != device.kind:
        raise HarnessError(
            f"{artifact.id}: host stored {host.kind} but the device stored {device.kind}; re-collect one of them"
        )
    ids = np.intersect1d(host.index, device.index)
    stats = divergence_arrays(host.rows(ids), device.rows(ids), host.kind)
    return OutputDivergence(
        artifact=artifact.id,
        variant=artifact.variant,
        framework=artifact.framework,
        format=artifact.format,
        role=artifact.role,
        **stats,  # type: ignore[arg-type]
    )


def _joined(v: object) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v if v is not None else "")


def _row_key(row: ResultRow) -> tuple[str, str, str, str]:
    """(family, method, variant(s), artifact(s)) identifies the same attack on two devices."""
    extra = row.model_extra or {}
    where = extra.get("artifact_id") or f"{_joined(extra.get('framework'))}/{_joined(extra.get('format'))}"
    return row.family, row.method, _joined(row.variant), _joined(where)


def _delta_tpr(dev: dict[str, float | None], host: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in sorted(set(dev) | set(host), key=float):
        a, b = dev.get(k), host.get(k)
        out[k] = None if a is None or b is None else float(a) - float(b)
    return out


def leakage_deltas(host_rows: list[ResultRow], device_rows: list[ResultRow]) -> list[dict[str, Any]]:
    """Each attack's figures on device outputs minus the same attack's on host outputs (rows matched by
    family, method, variant and artifact). AUC deltas are in AUC units; TPR deltas per FPR level."""
    host = {_row_key(r): r for r in host_rows}
    out = []
    for d in device_rows:
        h = host.get(_row_key(d))
        if h is None:
            continue
        extra = d.model_extra or {}
        out.append(
            {
                "family": d.family,
                "method": d.method,
                "variant": d.variant,
                **{k: extra[k] for k in ("artifact_id", "framework", "format") if k in extra},
                "auc_host": h.auc,
                "auc_device": d.auc,
                "delta_auc": d.auc - h.auc,
                "auc_ci_host": h.auc_ci,
                "auc_ci_device": d.auc_ci,
                "tpr_at_fpr_host": h.tpr_at_fpr,
                "tpr_at_fpr_device": d.tpr_at_fpr,
                "delta_tpr_at_fpr": _delta_tpr(d.tpr_at_fpr, h.tpr_at_fpr),
            }
        )
    return out


def host_shadow_attack(
    run: Path, device_id: str, console: Console | None = None, fits: Any | None = None
) -> list[ResultRow]:
    """The auditor's realistic case: every attack trained on the HOST's shadow outputs, applied to the DEVICE's
    target outputs. Returns the attack stage's rows (``shadow_device`` = ``local``, ``device`` = ``device_id``).

    Runs the attack stage (``harness.attack.stage.attack_rows``) with the shadow side forced to ``local``; nothing
    of the run directory is written. ``fits`` (a ``harness.attack.stage.FitCache``): attack groups already fitted
    on the host's shadows (by the attack stage on ``local``, or for another device) are reused, not refitted.
    """
    from harness.attack.stage import attack_rows

    rows, _ = attack_rows(run, device_id, shadow_device=HOST, fits=fits)
    bad = [r for r in rows if (r.model_extra or {}).get("shadow_device") not in (HOST, [HOST])]
    if bad:
        raise HarnessError(f"{run}: the host-shadow attack on {device_id} did not use host shadows ({bad[0].method})")
    for r in rows:
        (r.model_extra or {})["setting"] = "host shadows -> device targets"
    (console or Console()).print(
        f"compare {esc(device_id)}: {len(rows)} attacks trained on host shadows, applied to device targets"
    )
    return rows


def _common_artifacts(rd: RunDir, device_id: str) -> tuple[Manifest, list[ArtifactRecord], str]:
    """(manifest, the artifacts collected on both the host and ``device_id``, fingerprint of every input of the
    comparison: outputs, results, manifest, experiment.toml). One-line errors when a side has no outputs."""
    host_dir, dev_dir = rd.outputs_dir(HOST), rd.outputs_dir(device_id)
    if not host_dir.is_dir():
        raise HarnessError(f"{host_dir}: no host outputs; run 'compleak collect {rd.root} --device local' first")
    if not dev_dir.is_dir():
        raise HarnessError(
            f"{dev_dir}: no outputs for {device_id}; run 'compleak collect {rd.root} --device {device_id}'"
        )
    manifest = rd.load_manifest()
    common = [
        a
        for a in manifest.artifacts
        if rd.output_npz(HOST, a.id).is_file() and rd.output_npz(device_id, a.id).is_file()
    ]
    inputs = sorted(host_dir.glob("*.npz")) + [rd.output_npz(device_id, a.id) for a in common]
    inputs += [p for p in (rd.results(HOST), rd.results(device_id), rd.manifest, rd.experiment) if p.is_file()]
    return manifest, common, inputs_fingerprint(inputs, rd.root)


def _up_to_date(out: Path, fingerprint: str) -> bool:
    """True when ``out`` is a comparison of this version made from inputs with this ``fingerprint``."""
    if not out.is_file():
        return False
    try:
        old = load_json(out, COMPARE_MAX_BYTES)
    except ContractError:  # unreadable or malformed: recompute it
        return False
    return isinstance(old, dict) and old.get("fingerprint") == fingerprint and old.get("version") == COMPARE_VERSION


def _transfer(
    rd: RunDir, device_id: str, manifest: Manifest, common: list[ArtifactRecord], console: Console, fits: Any | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The host-shadow -> device-target rows (each beside the same attack with the device's own shadows, when the
    device has results), or a note why there are none."""
    targets = [a for a in common if a.role == "target"]
    if not (targets and any(rd.output_npz(HOST, s.id).is_file() for t in targets for s in manifest.shadows_of(t))):
        return [], "no target artifact collected on both sides with host shadow outputs"
    rows = host_shadow_attack(rd.root, device_id, console=console, fits=fits)
    own = {_row_key(r): r for r in load_results(rd.results(device_id))} if rd.results(device_id).is_file() else {}
    transfer_rows = []
    for r in rows:
        d = r.model_dump(mode="json")
        mine = own.get(_row_key(r))
        if mine is not None:  # the same attack with shadows collected on the device itself
            d["auc_device_shadows"] = mine.auc
            d["delta_auc_vs_device_shadows"] = r.auc - mine.auc
        transfer_rows.append(d)
    return transfer_rows, None


def compare_device(
    run: Path,
    device_id: str,
    console: Console | None = None,
    force: bool = False,
    fits: Any | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Compare ``device_id`` with the host for every artifact collected on both; write ``RUN/compare/<device>.json``.

    Skips the work when the file exists and its inputs (outputs, results, manifest, experiment.toml) did not change.
    ``on_step(done, total)`` (progress) is called as steps finish: one per common artifact, one for the host-shadow
    attacks.
    """
    console = console or Console()
    rd = RunDir(run)
    rd.require_writable("compare", "compare")
    if device_dirname(device_id) == device_dirname(HOST):
        raise HarnessError("compare: the device must not be 'local' (the host is the reference)")
    manifest, common, fp = _common_artifacts(rd, device_id)
    out = rd.compare_file(device_id)
    steps = len(common) + 1

    def step(done: int) -> None:
        if on_step is not None:
            on_step(done, steps)

    if not force and _up_to_date(out, fp):
        console.print(f"compare {esc(device_id)}: up to date ({esc(out)})")
        step(steps)
        return out
    divergences = []
    for i, a in enumerate(common):
        divergences.append(asdict(output_divergence(rd.load_outputs(HOST, a.id), rd.load_outputs(device_id, a.id), a)))
        step(i + 1)
    deltas: list[dict[str, Any]] = []
    if rd.results(HOST).is_file() and rd.results(device_id).is_file():
        deltas = leakage_deltas(load_results(rd.results(HOST)), load_results(rd.results(device_id)))
    transfer_rows, transfer_note = _transfer(rd, device_id, manifest, common, console, fits)
    step(steps)
    payload = {
        "version": COMPARE_VERSION,
        "device": device_id,
        "host": HOST,
        "fingerprint": fp,
        "artifacts": divergences,
        "leakage_deltas": deltas,
        "host_shadow_device_target": transfer_rows,
        "host_shadow_device_target_note": transfer_note,
    }
    atomic_write_json(out, payload)
    console.print(f"compare {esc(device_id)}: {len(divergences)} artifacts, {len(deltas)} attack deltas -> {esc(out)}")
    return out


def compare_run(
    run: Path, console: Console | None = None, force: bool = False, fits: Any | None = None
) -> list[Path]:
    """:func:`compare_device` for every collected device other than the host. Returns the files written."""
    rd = RunDir(run)
    devices = [d for d, _ in rd.collected_devices() if device_dirname(d) != device_dirname(HOST)]
    if not devices:
        return []
    if not rd.outputs_dir(HOST).is_dir():
        raise HarnessError(
            f"{run}: devices were collected but not the host; run 'compleak collect {run} --device local'"
        )
    if fits is None:  # one cache for every device: the host-shadow attacks are fitted once, not once per device
        from harness.attack.stage import FitCache

        fits = FitCache()
    console = console or Console()
    written = []
    with stage_progress(console) as progress:
        overall = progress.add_task(f"compare: 0/{len(devices)} devices", total=len(devices))
        for n, d in enumerate(devices):
            task = progress.add_task(f"  {esc(d)}: artifacts, then host-shadow attacks", total=None)

            def on_step(done: int, total: int, task: Any = task) -> None:
                progress.update(task, completed=done, total=total)

            written.append(compare_device(run, d, console=console, force=force, fits=fits, on_step=on_step))
            progress.update(task, description=f"  [green]✓[/] {esc(d)}")
            progress.update(overall, advance=1, description=f"compare: {n + 1}/{len(devices)} devices")
    return written


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _DeltaRow(_Loose):
    family: str
    method: str
    variant: str | list[str]
    delta_auc: float
    delta_tpr_at_fpr: dict[str, float | None] = Field(default_factory=dict)


class _TransferRow(ResultRow):
    auc_device_shadows: float | None = None
    delta_auc_vs_device_shadows: float | None = None


class CompareFile(_Loose):
    """Schema of ``RUN/compare/<device>.json`` as the report reads it (the file is untrusted input)."""

    version: int
    device: str
    host: str = HOST
    artifacts: list[OutputDivergence] = Field(default_factory=list)
    leakage_deltas: list[_DeltaRow] = Field(default_factory=list)
    host_shadow_device_target: list[_TransferRow] = Field(default_factory=list)
    host_shadow_device_target_note: str | None = None


COMPARE_MAX_BYTES = 64 << 20  # a comparison file is a few KiB; refuse absurd ones instead of reading them


def load_compare(run: Path) -> dict[str, dict[str, Any]]:
    """Every ``RUN/compare/*.json`` keyed by device id (empty when there is none), each validated against
    :class:`CompareFile`; a malformed one is a :class:`ContractError` naming the file and the fix."""
    base = RunDir(run).compare_dir
    out: dict[str, dict[str, Any]] = {}
    if not base.is_dir():
        return out
    fix = "delete it and rerun `compleak audit` (it recompares)"
    for p in sorted(base.glob("*.json")):
        if not p.is_file() or p.stat().st_size > COMPARE_MAX_BYTES:
            raise ContractError(f"{p}: not a regular file of at most {COMPARE_MAX_BYTES >> 20} MiB; {fix}")
        try:
            obj = load_json(p, COMPARE_MAX_BYTES)
        except ContractError as exc:
            raise ContractError(f"{exc}; {fix}") from None
        try:
            CompareFile.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            raise ContractError(f"{p}: [{loc}] {err['msg']}; {fix}") from None
        out[str(obj["device"])] = obj
    return out


def compare_for_report(run: Path, console: Console | None = None) -> list[Path]:
    """What ``compleak report`` does first: :func:`compare_run` on every collected device (an up-to-date
    comparison is not redone), so a report built from manual stages (collect, attack, report) shows host versus
    device. Returns the comparison files; none when only the host was collected or the run has no manifest (a run
    across seeds: each seed's run is compared by its own audit). Devices collected without the host cannot be
    compared: a note says so and the report goes on without the comparison."""
    console = console or Console()
    rd = RunDir(run)
    devices = [d for d, _ in rd.collected_devices() if device_dirname(d) != device_dirname(HOST)]
    if not devices or not rd.manifest.is_file():
        return []
    if not rd.outputs_dir(HOST).is_dir():
        console.print(
            f"[yellow]note[/]: {esc(', '.join(devices))} not compared with the host: the host has no outputs; run "
            f"'compleak collect {esc(run)} --device local', then 'compleak compare {esc(run)}'",
            highlight=False,
        )
        return []
    return compare_run(run, console=console)
