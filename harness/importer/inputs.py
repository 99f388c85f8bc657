"""What an import works from once its options are read: the experiment settings (``--config``, else the run's own
experiment.toml, else the defaults), the preprocessing, and the dataset the membership ids index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from harness.config import Experiment, Preprocess, load_experiment
from harness.errors import esc
from harness.importer.args import ImportRequest, load_preprocess, resolve_dataset_spec
from harness.importer.artifacts import Inspected, check_input_shape, probe_artifact
from rundir import RunDir

ACCURACY_SAMPLE = 500  # members and as many non-members run on the host per artifact (output kind, accuracy)


@dataclass(frozen=True)
class Probe:
    """The examples an artifact is tried on: ``ids`` (members first), their inputs ``x`` and the member count."""

    ids: np.ndarray
    x: np.ndarray
    n_members: int


@dataclass
class Inputs:
    """The request with its settings and data loaded (``base``: the experiment the run's config starts from)."""

    req: ImportRequest
    rd: RunDir
    console: Console
    base: Experiment
    pre: Preprocess
    layout_explicit: bool  # the preprocessing file states the layout
    spec: str  # the dataset spec with an absolute path
    data_dir: Path | None
    ds: Any  # harness.data.Dataset
    labels: np.ndarray  # int64 [N]

    @property
    def n(self) -> int:
        return len(self.ds.y)

    @property
    def seed(self) -> int:
        return self.base.experiment.seed

    @property
    def lowest_fpr(self) -> float:
        return min(self.base.attack.fprs) if self.base.attack.fprs else 0.0

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note[/]: {esc(text)}")

    def query(self, ids: np.ndarray) -> np.ndarray:
        """The query inputs of ``ids`` (float32 NHWC), as collect will build them."""
        from harness.data import query_inputs

        return query_inputs(self.ds, self.pre, ids)

    @staticmethod
    def probe_ids(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, int]:
        """The first :data:`ACCURACY_SAMPLE` members and as many non-members, and how many members that is."""
        m = members[:ACCURACY_SAMPLE]
        return np.concatenate([m, nonmembers[:ACCURACY_SAMPLE]]), len(m)

    def probe(self, members: np.ndarray, nonmembers: np.ndarray) -> Probe:
        ids, n_members = self.probe_ids(members, nonmembers)
        return Probe(ids, self.query(ids), n_members)

    def fit(self, art: Inspected, probe: Probe) -> str:
        """Check that the query inputs fit ``art`` and run it on the host (output kind, accuracy); its layout."""
        layout = check_input_shape(art, probe.x, self.pre, self.layout_explicit, self.req.preprocess)
        probe_artifact(art, probe.x, self.labels[probe.ids], probe.n_members, layout)
        return layout


def load_inputs(req: ImportRequest, rd: RunDir, console: Console) -> Inputs:
    """Read the settings and load the dataset (printing what it loads)."""
    if req.config is not None:
        base = load_experiment(req.config)
    elif rd.experiment.is_file():
        base = load_experiment(rd.experiment)
    else:
        base = Experiment()
    pre, layout_explicit = load_preprocess(req.preprocess)
    if req.preprocess is None and rd.experiment.is_file() and req.config is None:
        pre = base.data.preprocess
    from harness.data import load_dataset

    spec = resolve_dataset_spec(req.data)
    ddir = Path(req.data_dir).expanduser().resolve() if req.data_dir else None
    console.print(f"loading dataset [bold]{esc(req.data)}[/]")
    ds = load_dataset(spec, ddir)
    labels = np.asarray(ds.y, dtype=np.int64)
    return Inputs(req, rd, console, base, pre, layout_explicit, spec, ddir, ds, labels)
