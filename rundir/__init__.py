"""The run-directory contract: the ground floor every stage, device and attack stands on.

It is the single place that reads and writes the stable files between stages (docs/DESIGN.md, "Contracts"):

- ``splits.npz``                      -> :class:`Splits` (:mod:`rundir.splits`)
- ``manifest.json``                   -> :class:`Manifest` of :class:`ArtifactRecord` (:mod:`rundir.manifest`)
- ``outputs/<device>/<artifact>.npz`` -> :class:`OutputBatch` (:mod:`rundir.outputs`)
- ``attacks/<device>/results.json``   -> list of :class:`ResultRow` (:mod:`rundir.results`)
- every path of a run                 -> :class:`RunDir` (:mod:`rundir.layout`)

with atomic writes and bounded, pickle-free reads (:mod:`rundir.files`), the name and path rules for untrusted input
(:mod:`rundir.names`) and the attack vocabulary (:mod:`rundir.vocabulary`). It depends only on NumPy and pydantic and
imports no other package of the project; ``devices`` and ``compleak`` both stand on it. Every validation failure
raises :class:`ContractError` whose message names the file and the fix.
"""

from rundir.errors import ContractError, UnsafePathError
from rundir.files import (
    atomic_path,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    load_json,
    load_npz,
    sha256_file,
)
from rundir.layout import PERTURBED, SEEDS_DIR, RunDir
from rundir.manifest import ArtifactRecord, Manifest, TensorSpec
from rundir.names import NAME_HELP, NAME_MAX, check_name, device_dirname, inside_run, name_problem
from rundir.outputs import OutputBatch
from rundir.results import ResultRow, load_results, save_results
from rundir.splits import Splits

__all__ = [
    "ArtifactRecord", "ContractError", "Manifest", "NAME_HELP", "NAME_MAX", "OutputBatch", "PERTURBED", "ResultRow",
    "RunDir", "SEEDS_DIR", "Splits", "TensorSpec", "UnsafePathError", "atomic_path", "atomic_save_npz",
    "atomic_write_bytes", "atomic_write_json", "check_name", "device_dirname", "inside_run", "load_json", "load_npz",
    "load_results", "name_problem", "save_results", "sha256_file",
]
