"""The run directory's layout: :class:`RunDir` owns every path of a run, so no stage spells a file name of the run
itself (see docs/DESIGN.md, "Contracts")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from rundir.errors import ContractError
from rundir.files import load_json
from rundir.manifest import ArtifactRecord, Manifest
from rundir.names import check_name, device_dirname, inside_run
from rundir.outputs import OutputBatch
from rundir.splits import Splits

SEEDS_DIR = "seeds"
RESULTS = "results.json"  # attacks/<device>/results.json
#: the largest provenance file read (bytes): one chunk entry per 32768 queries, a few KiB each
MAX_PROVENANCE_BYTES = 16 << 20
PERTURBED = ".perturbed"  # outputs/<device>/<artifact>.perturbed.npz / .json: SAMIA's perturbed queries


class _At:
    """A fixed path of the run, relative to its root (read as ``run.<name>``, a :class:`~pathlib.Path`)."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, run: "RunDir | None", owner: type) -> Any:
        return self if run is None else run.root.joinpath(*self.parts)


class RunDir:
    """Every path of a run directory ``RUN/`` (nothing is created until a stage writes). Stages ask here and
    never spell a file name of the run themselves; names from run files or users pass the name rule
    (:func:`~rundir.names.check_name`) and paths the path rule (:meth:`inside`)."""

    experiment = _At("experiment.toml")  #: the config that made the run (copied in)
    splits = _At("splits.npz")  #: membership splits (:class:`~rundir.splits.Splits`)
    manifest = _At("manifest.json")  #: every artifact (:class:`~rundir.manifest.Manifest`)
    artifacts_dir = _At("artifacts")  #: the artifacts and the builders' caches
    queries = _At("queries.npz")  #: imported runs: query inputs, ``index`` int64 [M], ``x`` float32 [M, H, W, C]
    threat_model = _At("threat_model.json")  #: threat model, K, the attacker's pool, split sizes (build, import)
    compare_dir = _At("compare")  #: host-versus-device comparisons, one ``<device>.json`` each
    report_dir = _At("report")  #: the report
    report_index = _At("report", "index.html")  #: the self-contained page
    summary = _At("report", "summary.json")  #: the report's machine-readable summary
    seeds_dir = _At(SEEDS_DIR)  #: ``[experiment] seeds``: one complete run per seed, ``seeds/<seed>/``
    logs_dir = _At("logs")  #: third-party output of each command, ``logs/<command>.log``
    ray_logs_dir = _At("logs", "ray")  #: the embedded Ray's own logs, one folder per session
    exports_dir = _At("exports")  #: where ``compleak export --out`` may write inside a run

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths read from run files

    def inside(self, rel: str, what: str, source: object, under: str | None = None) -> Path:
        """``root / rel`` after checking that it stays inside the run: the one check for every path read from a
        run file.

        ``rel`` must be relative, ``/``-separated, without ``.``/``..`` components, and its resolved location
        (following any symlink already on disk) must lie under ``root`` (under ``root/under`` when given).
        Raises :class:`ContractError` ``"<source>: <what> '<rel>' ..."``.
        """
        return inside_run(self.root, rel, what, source, under)

    def artifact_path(self, record: ArtifactRecord) -> Path:
        """The artifact's file, checked with :meth:`inside` at use time (links planted after loading count too)."""
        return self.inside(record.path, "artifact path", f"{self.manifest} ({record.id})", under="artifacts")

    # ------------------------------------------------------------------ per device

    def outputs_dir(self, device_id: str) -> Path:
        """``outputs/<device>/``: the raw outputs a device's runtime produced."""
        return self.root / "outputs" / device_dirname(device_id)

    def output_npz(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{self._artifact(artifact_id)}.npz"

    def output_provenance(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{self._artifact(artifact_id)}.json"

    def perturbed_npz(self, device_id: str, artifact_id: str) -> Path:
        """``outputs/<device>/<artifact>.perturbed.npz``: SAMIA's perturbed outputs."""
        return self.outputs_dir(device_id) / f"{self._artifact(artifact_id)}{PERTURBED}.npz"

    def perturbed_provenance(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{self._artifact(artifact_id)}{PERTURBED}.json"

    def partial_dir(self, device_id: str, artifact_id: str, key: str, suffix: str = "") -> Path:
        """``outputs/<device>/.partial/<artifact><suffix>/<key>/``: an artifact's finished chunks while it is
        collected (``key`` names what they were computed from, e.g. the artifact's ``sha256[:16]``; ``suffix``
        ``.perturbed`` for SAMIA's perturbed queries)."""
        name = self._artifact(artifact_id) + suffix
        return self.outputs_dir(device_id) / ".partial" / name / check_name(key, "chunk key", self.manifest)

    def collect_lock(self, device_id: str) -> Path:
        """``.collect-<device>.lock``: held by the one collect of this run on this device."""
        return self.root / f".collect-{device_dirname(device_id)}.lock"

    def attacks_dir(self, device_id: str) -> Path:
        return self.root / "attacks" / device_dirname(device_id)

    def attack_folders(self) -> list[tuple[str, Path]]:
        """(folder name, ``results.json`` path) of every folder under ``attacks/`` (the device folders on disk,
        whether or not a device id names them; folders and ``attacks/`` itself that are symbolic links are left
        out: a run is untrusted)."""
        base = self.root / "attacks"
        if base.is_symlink() or not base.is_dir():
            return []
        return [(d.name, d / RESULTS) for d in sorted(base.iterdir()) if d.is_dir() and not d.is_symlink()]

    def results(self, device_id: str) -> Path:
        """``attacks/<device>/results.json``: the attack stage's rows."""
        return self.attacks_dir(device_id) / RESULTS

    def scores(self, device_id: str) -> Path:
        """``attacks/<device>/scores.npz``: the attack stage's per-example scores (``compleak.results.load_scores``)."""
        return self.attacks_dir(device_id) / "scores.npz"

    def compare_file(self, device_id: str) -> Path:
        """``compare/<device>.json``: the host-versus-device comparison of one device."""
        return self.compare_dir / f"{device_dirname(device_id)}.json"

    # ------------------------------------------------------------------ seeds, logs

    def seed_dir(self, seed: int) -> Path:
        """``seeds/<seed>/``: the complete run of one seed."""
        return self.seeds_dir / str(int(seed))

    def log_file(self, command: str) -> Path:
        """``logs/<command>.log``."""
        return self.logs_dir / f"{check_name(command, 'command name', 'logs')}.log"

    def _artifact(self, artifact_id: str) -> str:
        return check_name(artifact_id, "artifact id", self.manifest)

    # ------------------------------------------------------------------ checks and reads

    def require_writable(self, stage: str, *subdirs: str) -> None:
        """Fail fast, before any computing, when ``stage`` could not store its results.

        Checks the run root (or, when it does not exist yet, the nearest existing folder above it, where it will be
        created) and each existing ``root/<subdir>`` for write access (``os.access``: mode bits, ACLs, read-only
        mounts). Raises :class:`ContractError` naming the folder, the stage and the fix.
        """
        folders = [self.root] + [self.root / d for d in subdirs]
        for folder in folders:
            probe = folder
            while not probe.exists() and probe != probe.parent and folder is self.root:
                probe = probe.parent
            if not probe.exists():
                continue
            if not probe.is_dir():
                raise ContractError(
                    f"{probe}: not a folder, so `compleak {stage}` cannot write there; pick another path"
                )
            if not os.access(probe, os.W_OK | os.X_OK):
                raise ContractError(
                    f"{probe}: folder is read-only, so `compleak {stage}` could not store its results; make it "
                    "writable (chmod u+w, or remount read-write) or work on a copy of the run"
                )

    def collected_devices(self) -> Iterator[tuple[str, Path]]:
        """(device id, outputs folder) for every device with outputs; the id is read from provenance."""
        base = self.root / "outputs"
        if not base.is_dir():
            return
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            device_id = d.name
            for prov in sorted(d.glob("*.json")):
                try:  # untrusted: anything but {"device": {"id": "<str>"}} keeps the folder name
                    found = load_json(prov, MAX_PROVENANCE_BYTES)["device"]["id"]
                    device_id = found if isinstance(found, str) and found else d.name
                except (ContractError, KeyError, TypeError):
                    pass
                break
            yield device_id, d

    def load_splits(self) -> Splits:
        return Splits.load(self.splits)

    def load_manifest(self) -> Manifest:
        return Manifest.load(self.manifest)

    def load_outputs(self, device_id: str, artifact_id: str) -> OutputBatch:
        return OutputBatch.load(self.output_npz(device_id, artifact_id))
