"""The CI gate: ``--fail-on`` expressions evaluated over a run's attack results (``compleak check`` and
``compleak audit --fail-on``; the grammar and exit statuses are documented in docs/ci.md).

An expression is ``[SCOPE:]METRIC OP NUMBER``:

- ``METRIC``: ``auc``, ``auc_lo`` / ``auc_hi`` (the ends of the 95% bootstrap CI), ``bacc`` (balanced accuracy),
  ``eps`` (the empirical ε lower bound) or ``tpr@FPR`` (TPR at a false-positive rate the attack stage measured,
  e.g. ``tpr@0.001``);
- ``OP``: ``>``, ``>=``, ``<``, ``<=``; ``NUMBER``: a decimal (``0.6``, ``1e-3``) or a percentage (``5%`` is 0.05;
  also for the FPR: ``tpr@1%``). A threshold outside its metric's range (:data:`RANGES`: ``auc>60`` meaning 60 %)
  or one no value can cross (``auc>1``) is refused: such a rule could never trip;
- ``SCOPE`` (optional; default: every row of every device, variant and family): selectors joined by ``,`` that
  must all hold: a family (``NR``, ``SR``, ``MR``, ``baseline``) or ``KEY=PATTERN`` with KEY one of ``family``,
  ``method``, ``variant``, ``device``, ``framework``, ``format``, ``artifact``, ``seed`` and PATTERN a value with
  shell wildcards (``variant=prune-*``, ``device=adb://*``). A device matches by its id or its folder name; an MR
  row matches ``variant=`` when any of its variants does. The scope ends at the LAST ``:``, so device URIs with
  ports work (``device=ssh://pi@board:22:auc>0.6``).

A row *trips* a rule when it is in the rule's scope and its metric compares true. Rows whose sample cannot resolve
the rule's FPR level (``n_nonmembers * FPR < 1``) or that lack the metric are left out and counted in a note; a
rule that leaves out every row of its scope, or whose scope matches no row, is an error (exit 2): a gate that
measured nothing must not pass.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compleak.results import RunResult, eps_of, result_rows, tpr_at
from rundir.results import ResultRow
from harness.errors import HarnessError, esc
from rundir.vocabulary import ROW_FAMILIES

MAX_TABLE_ROWS = 40  # tripped rows printed; the rest are counted (a CI log stays readable)
EXIT_TRIPPED = 3  # the exit status of `compleak check` / `audit --fail-on` when a rule trips
SCOPE_KEYS = ("family", "method", "variant", "device", "framework", "format", "artifact", "seed")
METRICS = ("auc", "auc_lo", "auc_hi", "bacc", "eps", "tpr@FPR")
_BASE = ("auc", "auc_lo", "auc_hi", "bacc", "eps", "tpr")
#: ``compleak diff`` only: the row's metric minus the same attack's in the baseline run
DELTA = "delta_"
_ALIASES = {"balanced_accuracy": "bacc", "eps_lower_bound": "eps"}
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}  # fmt: skip
#: the values each metric can take (eps: the empirical ε lower bound, unbounded above)
RANGES: dict[str, tuple[float, float]] = {
    "auc": (0.0, 1.0), "auc_lo": (0.0, 1.0), "auc_hi": (0.0, 1.0), "bacc": (0.0, 1.0), "tpr": (0.0, 1.0),
    "eps": (0.0, math.inf),
}  # fmt: skip
RANGES |= {DELTA + k: (-hi, hi) for k, (_lo, hi) in list(RANGES.items())}
RANGES[DELTA + "eps"] = (-math.inf, math.inf)
GRAMMAR = "[SCOPE:]METRIC OP NUMBER, e.g. 'auc>0.6', 'tpr@0.01>=0.05' or 'NR,device=local:auc_lo>0.55' (docs/ci.md)"
_COND = re.compile(r"^\s*([A-Za-z_]+)(?:@([^<>=\s]*))?\s*(>=|<=|>|<|==|=|!=)?\s*(.*?)\s*$")


@dataclass(frozen=True)
class Selector:
    """One scope selector: ``key`` matches ``pattern`` (fnmatch wildcards; families case-insensitively)."""

    key: str
    pattern: str

    def matches(self, r: RunResult) -> bool:
        row, extra = r.row, r.row.model_extra or {}
        if self.key == "family":
            return row.family.lower() == self.pattern.lower() or fnmatch.fnmatchcase(row.family, self.pattern)
        if self.key == "device":
            return any(fnmatch.fnmatchcase(v, self.pattern) for v in (r.device, r.dirname))
        if self.key == "seed":
            return r.seed is not None and fnmatch.fnmatchcase(str(r.seed), self.pattern)
        value = {"method": row.method, "variant": row.variant, "framework": extra.get("framework"),
                 "format": extra.get("format"), "artifact": extra.get("artifact_id", extra.get("artifact"))}[self.key]
        values = value if isinstance(value, list) else [value]
        return any(isinstance(v, str) and fnmatch.fnmatchcase(v, self.pattern) for v in values)

    def __str__(self) -> str:
        return f"{self.key}={self.pattern}"


@dataclass(frozen=True)
class Rule:
    """One parsed ``--fail-on`` expression."""

    text: str  # as the user typed it
    scope: tuple[Selector, ...]
    metric: str  # auc | auc_lo | auc_hi | bacc | eps | tpr
    level: float | None  # the FPR of tpr@FPR
    op: str
    threshold: float

    @property
    def metric_name(self) -> str:
        return f"{self.metric}@{self.level:g}" if self.level is not None else self.metric

    @property
    def is_delta(self) -> bool:
        return self.metric.startswith(DELTA)

    def in_scope(self, r: RunResult) -> bool:
        return all(s.matches(r) for s in self.scope)

    def value(self, r: RunResult) -> tuple[float | None, bool]:
        """(the row's value of this rule's metric or None, whether the row resolves it); a ``delta_`` metric is
        the row's value minus its baseline row's (``RunResult.baseline``, set by ``compleak diff``)."""
        if not self.is_delta:
            return _metric(r.row, self.metric, self.level)
        if r.baseline is None:
            return None, True
        (new, ok_new), (old, ok_old) = (_metric(row, self.metric[len(DELTA):], self.level)
                                        for row in (r.row, r.baseline))  # fmt: skip
        return (new - old if new is not None and old is not None else None), ok_new and ok_old

    def trips(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return self.text


def _metric(row: ResultRow, metric: str, level: float | None) -> tuple[float | None, bool]:
    """(``row``'s value of a base metric or None, whether its sample resolves it)."""
    if metric == "tpr":
        assert level is not None
        return tpr_at(row, level)
    ci = list(row.auc_ci) + [None, None]
    v = {"auc": row.auc, "auc_lo": ci[0], "auc_hi": ci[1], "bacc": row.balanced_accuracy,
         "eps": eps_of(row)}[metric]  # fmt: skip
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return (float(v) if ok else None), True  # type: ignore[arg-type]


def _bad(text: str, why: str) -> HarnessError:
    return HarnessError(f"--fail-on {text!r}: {why}; write {GRAMMAR}")


def _parse_scope(text: str, scope: str) -> tuple[Selector, ...]:
    out = []
    for part in scope.split(","):
        part = part.strip()
        if not part:
            raise _bad(text, "empty selector in the scope before ':' (a stray ',')")
        if "=" not in part:
            fam = next((f for f in ROW_FAMILIES if f.lower() == part.lower()), None)
            if fam is None:
                fams = ", ".join(ROW_FAMILIES)
                raise _bad(text, f"unknown scope {part!r}: a family ({fams}) or KEY=PATTERN with KEY "
                                 f"one of {', '.join(SCOPE_KEYS)}")
            out.append(Selector("family", fam))
            continue
        key, _, pattern = part.partition("=")
        key, pattern = key.strip().lower(), pattern.strip()
        if key not in SCOPE_KEYS:
            raise _bad(text, f"unknown scope key {key!r}; use one of {', '.join(SCOPE_KEYS)}")
        if not pattern:
            raise _bad(text, f"scope key {key!r} has no value (write {key}=VALUE)")
        if key == "family":
            pattern = next((f for f in ROW_FAMILIES if f.lower() == pattern.lower()), pattern)
        out.append(Selector(key, pattern))
    return tuple(out)


def parse_rule(text: str) -> Rule:
    """Parse one ``--fail-on`` expression (module doc). A malformed one raises :class:`HarnessError` with one line
    naming the problem and the grammar."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "empty expression")
    if len(text) > 500 or not text.isprintable():
        raise _bad(text[:60], "not a short printable expression")
    scope_text, sep, cond = text.rpartition(":")
    if sep and not any(c in cond for c in "<>=") and any(c in scope_text for c in "<>"):
        raise _bad(text, "the scope goes first and the condition last, as in 'NR:auc>0.6'")
    scope = _parse_scope(text, scope_text) if sep else ()
    m = _COND.match(cond)
    if not m or not m.group(1):
        raise _bad(text, f"expected METRIC OP NUMBER after the scope, got {cond.strip()!r}")
    name, level_text, op, num = m.group(1).lower(), m.group(2), m.group(3), m.group(4)
    delta = DELTA if name.startswith(DELTA) else ""
    base = _ALIASES.get(name[len(delta):], name[len(delta):])
    name = delta + base
    if base not in _BASE:
        hint = " (the FPR goes after '@': tpr@0.001)" if base.startswith("tpr") else ""
        raise _bad(text, f"unknown metric {m.group(1)!r}{hint}; metrics are {', '.join(METRICS)} (and "
                         f"{DELTA}METRIC in compleak diff)")  # fmt: skip
    level = None
    if base == "tpr":
        if not level_text:
            raise _bad(text, "tpr needs its false-positive rate: tpr@0.001 or tpr@0.01")
        try:
            level = _number(level_text)
        except ValueError:
            raise _bad(text, f"{level_text!r} after 'tpr@' is not a false-positive rate such as 0.001") from None
        if not 0.0 < level <= 1.0:
            raise _bad(text, f"tpr@{level_text}: the false-positive rate must be in (0, 1], e.g. tpr@0.001")
    elif level_text is not None:
        raise _bad(text, f"only {delta}tpr takes '@FPR', not {name}")
    if op is None:
        raise _bad(text, f"no comparison after {m.group(1)!r}; use one of > >= < <=")
    if op not in OPS:
        raise _bad(text, f"comparison {op!r} is not supported; use one of > >= < <=")
    try:
        threshold = _number(num)
    except ValueError:
        raise _bad(text, f"threshold {num!r} is not a number") from None
    if not math.isfinite(threshold):
        raise _bad(text, f"threshold {num!r} is not a finite number")
    _check_range(text, name, level, op, threshold, num)
    return Rule(text.strip(), scope, name, level, op, threshold)


def _number(text: str) -> float:
    """``0.05``, ``5e-2`` or ``5%`` -> 0.05 (raises ValueError)."""
    text = text.strip()
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def _check_range(text: str, name: str, level: float | None, op: str, threshold: float, typed: str) -> None:
    """Refuse a threshold outside the metric's range, or one no value in the range can cross (the rule could never
    trip, so the gate would pass by mistake)."""
    lo, hi = RANGES[name]
    metric = f"{name}@{level:g}" if level is not None else name
    span = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f"at least {lo:g}" if math.isfinite(lo) else "any number"
    if not lo <= threshold <= hi:
        hint = f" (for {threshold:g}% write {threshold / 100:g} or {typed.strip()}%)" if 1 < threshold <= 100 and \
            not typed.strip().endswith("%") and hi == 1.0 else ""  # fmt: skip
        raise _bad(text, f"{metric} lies in {span}; the threshold {typed.strip()} is outside it{hint}")
    never = (op == ">" and threshold >= hi) or (op == "<" and threshold <= lo)
    if never:
        raise _bad(text, f"no {metric} is {op} {threshold:g} ({metric} lies in {span}), so this rule could never trip")


def parse_rules(texts: Sequence[str]) -> list[Rule]:
    """:func:`parse_rule` of each expression (the first malformed one raises)."""
    return [parse_rule(t) for t in texts]


@dataclass
class Trip:
    """A row that trips a rule, with the value that did it."""

    rule: Rule
    result: RunResult
    value: float


@dataclass
class GateOutcome:
    """What the gate found: every tripped (rule, row) and notes about rows it could not judge."""

    rules: list[Rule]
    n_rows: int
    trips: list[Trip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: rule text -> the rows it judged (in its scope, with a resolvable value)
    judged: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.trips

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else EXIT_TRIPPED


def _available(results: list[RunResult]) -> str:
    devs = sorted({r.device for r in results})
    fams = sorted({r.row.family for r in results})
    return f"this run has devices {', '.join(devs)} and families {', '.join(fams)}"


def evaluate_gate(results: list[RunResult], rules: Sequence[Rule]) -> GateOutcome:
    """Evaluate ``rules`` over ``results`` (``compleak.results.result_rows``). Raises :class:`HarnessError` when
    there are no rows, when a rule's scope matches no row, or when no row in its scope has a resolvable value of
    its metric (the gate would pass without having measured anything)."""
    if not results:
        raise HarnessError("no attack results to check; run 'compleak attack RUN' (or 'compleak audit') first")
    out = GateOutcome(list(rules), len(results))
    for rule in rules:
        if rule.is_delta and not any(r.baseline is not None for r in results):
            raise HarnessError(f"--fail-on {rule.text!r}: {DELTA}metrics compare a run with a baseline run; use "
                               f"compleak diff BASELINE_RUN RUN --fail-on '{rule.text}'")  # fmt: skip
        scoped = [r for r in results if rule.in_scope(r)]
        if not scoped:
            raise HarnessError(f"--fail-on {rule.text!r}: no result row matches the scope "
                               f"{','.join(map(str, rule.scope))}; {_available(results)}")  # fmt: skip
        judged, missing, unresolved = 0, 0, 0
        for r in scoped:
            v, ok = rule.value(r)
            if not ok:
                unresolved += 1
            elif v is None:
                missing += 1
            else:
                judged += 1
                if rule.trips(v):
                    out.trips.append(Trip(rule, r, v))
        need = f"at least {math.ceil(1 / rule.level - 1e-9)} non-members" if rule.level else ""
        if judged == 0:
            if unresolved:
                n0 = max(r.row.n_nonmembers for r in scoped)
                raise HarnessError(
                    f"--fail-on {rule.text!r}: no row in its scope can resolve {rule.metric_name} ({need} are "
                    f"needed; the rows have {n0}); enlarge the evaluation set or gate an FPR of at least "
                    f"1/{n0} = {_fmt(1 / max(n0, 1))} (or gate auc / auc_lo instead)"
                )
            if rule.metric == "tpr":
                have = sorted({float(k) for r in scoped for k in r.row.tpr_at_fpr if _is_rate(k)})
                raise HarnessError(
                    f"--fail-on {rule.text!r}: no row in its scope measured {rule.metric_name} (measured: "
                    f"{', '.join(f'tpr@{x:g}' for x in have) or 'none'}); gate one of those, or add {rule.level:g} "
                    "to [attack] fprs and rerun 'compleak attack RUN'"
                )
            what = "the ε lower bound" if rule.metric == "eps" else rule.metric_name
            raise HarnessError(f"--fail-on {rule.text!r}: no row in its scope has {what}; rerun 'compleak attack RUN' "
                               "with this version to add it, or gate another metric")  # fmt: skip
        out.judged[rule.text] = judged
        if unresolved:
            out.notes.append(f"{rule.text}: {unresolved} of {len(scoped)} rows cannot resolve {rule.metric_name} "
                             f"({need}) and were not judged")  # fmt: skip
        if missing:  # fail closed: a row in scope that the gate cannot judge could be the one that trips
            first = next(r for r in scoped if rule.value(r) == (None, True))
            raise HarnessError(
                f"--fail-on {rule.text!r}: {missing} of {len(scoped)} rows in its scope have no {rule.metric_name} "
                f"(NaN or missing; e.g. {first.row.family} {first.row.method} on {first.device}), so the gate cannot "
                "judge them; rerun 'compleak attack RUN' to recompute them, or narrow the scope"
            )
    return out


def check_run(run: Path | str, rules: Sequence[Rule] | Sequence[str]) -> GateOutcome:
    """Evaluate ``rules`` (parsed or as text) over every result row of ``run`` and of its per-seed runs. Reads only;
    raises :class:`HarnessError` / ``ContractError`` on bad input (exit 2 in the CLI)."""
    parsed = [r if isinstance(r, Rule) else parse_rule(r) for r in rules]
    if not parsed:
        raise HarnessError("no --fail-on expression given; add one such as --fail-on 'auc>0.6' (docs/ci.md)")
    if not Path(run).is_dir():
        raise HarnessError(f"{run}: no such run directory; give the folder 'compleak audit' or 'compleak build' made")
    return evaluate_gate(result_rows(run), parsed)


def _is_rate(key: str) -> bool:
    try:
        return 0.0 < float(key) <= 1.0
    except ValueError:
        return False


def _fmt(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e4 else f"{v:.3g}"


def ordered_trips(outcome: GateOutcome) -> list[Trip]:
    """The tripped rows in rule order, per rule the furthest over its threshold first."""
    order = {r.text: i for i, r in enumerate(outcome.rules)}
    return sorted(outcome.trips, key=lambda t: (order.get(t.rule.text, 0), -abs(t.value - t.rule.threshold)))


def gate_table(outcome: GateOutcome, max_rows: int = MAX_TABLE_ROWS) -> Table:
    """The tripped rows as a rich table, per rule the furthest over its threshold first, at most ``max_rows`` (a
    caption counts the rest); every string from the run escaped."""
    seeds = any(t.result.seed is not None for t in outcome.trips)
    trips = ordered_trips(outcome)
    left = len(trips) - max_rows
    table = Table(title="rows over the --fail-on thresholds", title_justify="left",
                  caption=f"… and {left} more (all of them: compleak export RUN)" if left > 0 else None,
                  caption_justify="left")  # fmt: skip
    for col in ("rule", "device", *(["seed"] if seeds else []), "family", "method", "variant", "artifact", "value"):
        table.add_column(col, justify="right" if col in ("value", "seed") else "left", overflow="fold")
    for t in trips[:max_rows]:
        row, extra = t.result.row, t.result.row.model_extra or {}
        variant = " + ".join(row.variant) if isinstance(row.variant, list) else row.variant
        art = extra.get("artifact_id", extra.get("artifact", ""))
        art = ", ".join(map(str, art)) if isinstance(art, list) else str(art or "")
        cells = [t.rule.text, t.result.device, *([str(t.result.seed)] if seeds else []), row.family, row.method,
                 variant, art]  # fmt: skip
        value = f"[bold red]{_fmt(t.value)}[/] {esc(t.rule.op)} {_fmt(t.rule.threshold)}"
        table.add_row(*[esc(c) for c in cells], value)
    return table


def print_outcome(outcome: GateOutcome, console: Console) -> None:
    """Print the gate's verdict: the tripped rows as a table, or one line saying every rule held; notes after."""
    n = len(outcome.rules)
    if outcome.passed:
        console.print(f"[green]gate passed[/]: {n} rule{'s' if n != 1 else ''} held", highlight=False)
        for rule in outcome.rules:
            k = outcome.judged.get(rule.text, 0)
            console.print(f"  {esc(rule.text)}: on {k} of {outcome.n_rows} result rows"
                          + (" (its scope)" if rule.scope else ""), highlight=False, markup=True)
    else:
        rows = {id(t.result) for t in outcome.trips}
        rules = {t.rule.text for t in outcome.trips}
        console.print(gate_table(outcome))
        console.print(
            f"[bold red]gate failed[/]: {len(rows)} result row{'s' if len(rows) != 1 else ''} over "
            f"{len(rules)} of {n} rule{'s' if n != 1 else ''} (exit status {EXIT_TRIPPED})",
            highlight=False,
        )
    for note in outcome.notes:
        console.print(f"[yellow]note[/]: {esc(note)}", highlight=False)


# --------------------------------------------------------------------------- machine-readable verdicts

FORMATS = ("text", "json", "github")


def _trip_fields(t: Trip) -> dict[str, object]:
    row, extra = t.result.row, t.result.row.model_extra or {}
    art = extra.get("artifact_id", extra.get("artifact", ""))
    return {"rule": t.rule.text, "device": t.result.device, "seed": t.result.seed, "family": row.family,
            "method": row.method, "variant": row.variant, "artifact": art, "metric": t.rule.metric_name,
            "value": t.value, "op": t.rule.op, "threshold": t.rule.threshold}  # fmt: skip


def outcome_json(outcome: GateOutcome) -> dict[str, object]:
    """The verdict as one JSON object: passed, exit_status, every rule with the rows it judged and tripped, every
    tripped row (rule, device, seed, family, method, variant, artifact, metric, value, op, threshold), notes."""
    tripped: dict[str, int] = {}
    for t in outcome.trips:
        tripped[t.rule.text] = tripped.get(t.rule.text, 0) + 1
    return {
        "passed": outcome.passed, "exit_status": outcome.exit_code, "result_rows": outcome.n_rows,
        "rules": [{"rule": r.text, "judged": outcome.judged.get(r.text, 0), "tripped": tripped.get(r.text, 0)}
                  for r in outcome.rules],
        "trips": [_trip_fields(t) for t in outcome.trips], "notes": list(outcome.notes),
    }  # fmt: skip


def _gh(text: object, prop: bool = False) -> str:
    """Escape a value for a GitHub workflow command (data, or a property when ``prop``)."""
    s = str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return s.replace(":", "%3A").replace(",", "%2C") if prop else s


def github_annotations(outcome: GateOutcome, max_rows: int = MAX_TABLE_ROWS) -> list[str]:
    """GitHub Actions workflow commands: one ``::error`` per tripped row (the furthest over first, at most
    ``max_rows``, then one counting the rest), ``::warning`` per note, ``::notice`` when every rule held."""
    lines = []
    trips = ordered_trips(outcome)
    for t in trips[:max_rows]:
        f = _trip_fields(t)
        variant = " + ".join(f["variant"]) if isinstance(f["variant"], list) else f["variant"]  # type: ignore[arg-type]
        lines.append(f"::error title={_gh('compleak gate: ' + t.rule.text, prop=True)}::"
                     + _gh(f"{f['family']} {f['method']} on {f['device']} ({variant}): {f['metric']} = "
                           f"{_fmt(t.value)} {t.rule.op} {_fmt(t.rule.threshold)}"))  # fmt: skip
    if len(trips) > max_rows:
        lines.append(f"::error title=compleak gate::… and {len(trips) - max_rows} more rows over the thresholds "
                     "(all of them: compleak check RUN --format json)")  # fmt: skip
    lines += [f"::warning title=compleak gate::{_gh(n)}" for n in outcome.notes]
    if outcome.passed:
        held = "; ".join(f"{r.text} on {outcome.judged.get(r.text, 0)} rows" for r in outcome.rules)
        lines.append(f"::notice title=compleak gate::{_gh('gate passed: ' + held)}")
    return lines


def _md(text: object) -> str:
    """A run's string made inert in a Markdown table cell (no HTML, no cell breaks, no code spans)."""
    import html

    return html.escape(str(text)).replace("|", "\\|").replace("`", "&#96;").replace("\n", " ")


def step_summary(outcome: GateOutcome, max_rows: int = MAX_TABLE_ROWS) -> str:
    """The verdict as Markdown for a GitHub job summary: the verdict line, each rule with its judged and tripped
    rows, then the tripped rows (at most ``max_rows``)."""
    data = outcome_json(outcome)
    head = "**compleak gate passed**" if outcome.passed else f"**compleak gate failed** (exit status {EXIT_TRIPPED})"
    out = [head, "", "| rule | rows judged | rows over |", "|---|---|---|"]
    out += [f"| {_md(r['rule'])} | {r['judged']} | {r['tripped']} |" for r in data["rules"]]  # type: ignore[index]
    if outcome.trips:
        out += ["", "| rule | device | family | method | variant | value |", "|---|---|---|---|---|---|"]
        for t in outcome.trips[:max_rows]:
            f = _trip_fields(t)
            variant = " + ".join(f["variant"]) if isinstance(f["variant"], list) else f["variant"]  # type: ignore
            out.append(f"| {_md(t.rule.text)} | {_md(f['device'])} | {_md(f['family'])} | {_md(f['method'])} | "
                       f"{_md(variant)} | {_fmt(t.value)} {_md(t.rule.op)} {_fmt(t.rule.threshold)} |")  # fmt: skip
        if len(outcome.trips) > max_rows:
            out.append(f"\n… and {len(outcome.trips) - max_rows} more rows (compleak check RUN --format json)")
    out += [f"\n> note: {_md(n)}" for n in outcome.notes]
    return "\n".join(out) + "\n"


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased when it is one of :data:`FORMATS`, else a one-line error."""
    if fmt.lower() not in FORMATS:
        raise HarnessError(f"--format {fmt[:40]!r}: choose one of {', '.join(FORMATS)}")
    return fmt.lower()


def print_verdict(outcome: GateOutcome, fmt: str, console: Console) -> None:
    """Print the verdict as ``text`` (:func:`print_outcome`), ``json`` (:func:`outcome_json`, on standard output)
    or ``github`` (:func:`github_annotations`, and :func:`step_summary` appended to ``$GITHUB_STEP_SUMMARY`` when
    that file is set, as in a GitHub Actions step)."""
    import json
    import os
    import sys

    if fmt == "json":
        sys.stdout.write(json.dumps(outcome_json(outcome), indent=1) + "\n")
    elif fmt == "github":
        sys.stdout.write("".join(line + "\n" for line in github_annotations(outcome)))
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(step_summary(outcome))
    else:
        print_outcome(outcome, console)
