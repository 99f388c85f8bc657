"""The import's atomic write: everything is staged in a private folder inside the run, read back, and only then
moved into place with renames, so a failed import leaves the run exactly as it was."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from harness.config import load_experiment
from harness.errors import HarnessError
from harness.importer.text import first_line
from rundir import ArtifactRecord, ContractError, Manifest, RunDir, Splits, atomic_path, load_json, sha256_file


def copy_into(src: Path, dest: Path, sha256: str) -> None:
    """Copy ``src`` to ``dest`` atomically and verify the copy's sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256_file(dest) == sha256:
        return
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != sha256:
            raise HarnessError(f"{src}: changed while being copied into {dest.parent}; retry")


class Staging:
    """Where an import writes: a private folder inside the run (``RUN/.import-staging-XXXXXXXX``, mode 0700).

    Everything the import produces (copied and trained artifacts, ``build/``, ``manifest.json``, ``splits.npz``,
    ``experiment.toml``, ``threat_model.json``) is written here, checked (:meth:`check`), and only then moved into
    the run with renames (:meth:`commit`; ``manifest.json`` last, a replaced file is put back if a rename fails).
    On any failure the folder is removed, and so is the run directory itself when this import created it: a failed
    import leaves the run exactly as it was.
    """

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        self._dir: Path | None = None
        self._created: list[Path] = []  # folders this import created (removed again on failure)

    @property
    def dir(self) -> Path:
        """The staging folder, created (with the run directory when missing) on first use."""
        if self._dir is None:
            root = self.rd.root
            if root.exists() and not root.is_dir():
                raise HarnessError(f"{root}: exists and is not a folder; import into a run directory")
            missing: list[Path] = []
            probe = root
            while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
                missing.append(probe)
                probe = probe.parent
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            self._dir = Path(tempfile.mkdtemp(prefix=".import-staging-", dir=root))
        return self._dir

    @property
    def run(self) -> RunDir:
        """The staging folder laid out as a run (the same relative paths as the run's)."""
        return RunDir(self.dir)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        if exc_type is not None:
            for folder in reversed(self._created):
                try:
                    folder.rmdir()
                except OSError:
                    break

    def final_path(self, staged: str | Path) -> str:
        """Where a path inside the staging folder will be once committed (other paths unchanged)."""
        path = Path(staged)
        base = self.dir.resolve()
        if path.resolve().is_relative_to(base):
            return str(self.rd.root.resolve() / path.resolve().relative_to(base))
        return str(staged)

    def check(self, records: list[ArtifactRecord]) -> None:
        """Read back what was staged: manifest, splits, experiment, threat model, and each new artifact's sha256."""
        stage = self.run
        try:
            manifest = Manifest.load(stage.manifest)
            Splits.load(stage.splits).validate("membership")
            load_json(stage.threat_model)
        except (ContractError, OSError, ValueError) as exc:
            raise HarnessError(f"{self.rd.root}: the import did not read back ({first_line(exc)}); nothing was "
                               f"changed; please report this") from None
        load_experiment(stage.experiment)
        for rec in records:
            staged = stage.root / rec.path
            path = staged if staged.is_file() else self.rd.artifact_path(rec)
            listed = rec.id in {a.id for a in manifest.artifacts}
            if not listed or not path.is_file() or sha256_file(path) != rec.sha256:
                raise HarnessError(f"{path}: does not hold artifact {rec.id} (sha256 {rec.sha256[:12]}); retry")

    def _files(self) -> list[Path]:
        """The staged files, relative to the staging folder, ``manifest.json`` last; each destination checked
        (inside the run, not a folder)."""
        stage = self.dir
        manifest = self.rd.manifest.relative_to(self.rd.root)
        files = sorted(
            (p.relative_to(stage) for p in stage.rglob("*") if p.is_file() and not p.is_symlink()),
            key=lambda rel: (rel == manifest, str(rel)),
        )
        for rel in files:
            dest = self.rd.inside(rel.as_posix(), "imported file", "compleak import")
            if dest.is_dir() and not dest.is_symlink():
                raise HarnessError(f"{dest}: is a folder where the import must write a file; move it away and retry")
        return files

    def commit(self) -> None:
        """Move every staged file to the same place in the run (renames; ``manifest.json`` last). Every destination
        is checked first (inside the run, not a folder); when a rename fails, what was already moved is undone."""
        stage = self.dir
        files = self._files()
        backup = stage / ".replaced"
        done: list[tuple[Path, bool, list[Path]]] = []
        try:
            for rel in files:
                dest = self.rd.root / rel
                had = dest.exists() or dest.is_symlink()
                if had:
                    (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dest, backup / rel)
                made = [d for d in reversed(dest.parents) if d.is_relative_to(self.rd.root) and not d.exists()]
                for d in made:
                    d.mkdir()
                os.replace(stage / rel, dest)
                done.append((rel, had, made))
        except BaseException:
            self._undo(done, backup)
            raise

    def _undo(self, done: list[tuple[Path, bool, list[Path]]], backup: Path) -> None:
        """Put back what :meth:`commit` already moved: replaced files from ``backup``, new files and folders gone."""
        for rel, had, made in reversed(done):
            dest = self.rd.root / rel
            if had:
                os.replace(backup / rel, dest)
            else:
                dest.unlink(missing_ok=True)
            for d in reversed(made):
                try:
                    d.rmdir()
                except OSError:
                    pass
