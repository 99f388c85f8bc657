"""The build stage inside a toolchain image (``compleak build --container``): the mounts and the engine command
line, and the container's image id stamped into the manifest records the build wrote."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from harness.errors import HarnessError
from harness.toolchain.engine import Engine, detect_engine, say
from harness.toolchain.images import ImageSpec, image_spec
from harness.toolchain.rootfs import host_arch
from rundir import RunDir

if TYPE_CHECKING:
    from harness.config import Experiment

SOURCE_PACKAGES = ("rundir", "compleak", "devices", "harness")  # mounted into toolchain containers


def _toolchain_image(container: str, eng: Engine) -> ImageSpec:
    name = container.removeprefix("localhost/compleak-")
    if not name.startswith(("toolchain-tf", "toolchain-torch")):
        raise HarnessError(f"--container '{container}': use toolchain-tf[:TF_VERSION] or toolchain-torch")
    spec = image_spec(name, host_arch())
    eng.require_image(spec.ref, spec.build_command)
    return spec


def _read_only_dirs(exp: Experiment, experiment: Path, data_dir: Path | None, cwd: Path) -> list[Path]:
    """Folders the build reads, mounted read-only at the same absolute paths: the working directory, the
    experiment's folder, the data folders and the folder of an ``npz:`` / ``imagefolder:`` dataset."""
    ro_dirs = [cwd] if cwd != Path("/") else []
    ro_dirs.append(experiment.parent)
    for d in (data_dir, exp.data.data_dir, "/usr/share/datasets"):
        if d and Path(d).expanduser().is_dir():
            ro_dirs.append(Path(d).expanduser().resolve())
    for prefix in ("npz:", "imagefolder:"):
        if exp.data.dataset.startswith(prefix):
            p = Path(exp.data.dataset[len(prefix):]).expanduser()
            p = p if p.is_absolute() else cwd / p
            if p.exists():
                ro_dirs.append(p.resolve().parent)
    return ro_dirs


def _mounts(exp: Experiment, ro_dirs: list[Path], run: Path) -> list[tuple[Path, str]]:
    """(host path, ``target:mode``) of every mount: the project's packages read-only under ``/opt/compleak-src``,
    ``ro_dirs`` read-only, the run directory read-write, the user's dataset cache under the container's HOME."""
    src = Path(__file__).resolve().parents[2]
    mounts: list[tuple[Path, str]] = [(src / pkg, f"/opt/compleak-src/{pkg}:ro") for pkg in SOURCE_PACKAGES]
    for d in dict.fromkeys(ro_dirs):
        if d != run:  # nested mounts are fine: the engine mounts parents first
            mounts.append((d, f"{d}:ro"))
    mounts.append((run, f"{run}:rw"))
    # datasets harness.data cached under the user's cache folder appear at the same place under the container's HOME
    datasets = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compleak" / "datasets"
    if datasets.is_dir():
        mounts.append((datasets, f"/tmp/.cache/compleak/datasets:{'rw' if exp.data.download else 'ro'}"))
    return mounts


def build_in_container(experiment: Path, out: Path | None = None, data_dir: Path | None = None, force: bool = False,
                       container: str = "toolchain-tf", engine: str | None = None,
                       console: Console | None = None) -> Path:
    """Run ``compleak build`` inside a toolchain image and return the run directory.

    Mounts (same absolute paths inside): the project's packages read-only on ``PYTHONPATH``, the experiment file and
    the data folders read-only (and the user's dataset cache under the container's ``HOME=/tmp``), the working
    directory read-only, the run directory read-write. No network unless
    the experiment downloads its dataset. Afterwards every manifest record written by this build gets
    ``toolchain.container = {"image", "image_id", "engine", "versions"}``.
    """
    from harness.config import load_experiment

    experiment = Path(experiment).resolve()
    exp = load_experiment(experiment)
    eng = detect_engine(engine)
    spec = _toolchain_image(container, eng)
    wanted = set(exp.export.frameworks)
    have = {"toolchain-tf": {"tf"}, "toolchain-torch": {"torch"}}[spec.name]
    if wanted - have:
        raise HarnessError(
            f"{experiment}: [export] frameworks {sorted(wanted)} but {spec.name} builds only {sorted(have)}; "
            f"set frameworks = {sorted(have)} for this build (build the rest on the host or in the other toolchain)"
        )
    run = Path(out).resolve() if out else (Path.cwd() / "runs" / exp.experiment.name).resolve()
    run.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd().resolve()
    ro_dirs = _read_only_dirs(exp, experiment, data_dir, cwd)
    mounts = _mounts(exp, ro_dirs, run)

    argv = ["run", "--rm", *eng.limits(), "--workdir", str(cwd if cwd in ro_dirs else run)]
    argv += ["--network", "host" if exp.data.download else "none"]
    if eng.name == "docker" and os.geteuid() != 0:
        argv += ["--user", f"{os.getuid()}:{os.getgid()}"]
    for host, target in mounts:
        argv += ["-v", f"{host}:{target}"]
    env = {"PYTHONPATH": "/opt/compleak-src", "HOME": "/tmp", "PYTHONUNBUFFERED": "1", "COMPLEAK_CONTAINER": spec.ref}
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    # serial inside the container: the toolchain images hold no Ray (the container is the unit of isolation)
    inner = ["python", "-m", "harness.cli", "build", str(experiment), "--out", str(run), "--no-ray"]
    if data_dir:
        inner += ["--data-dir", str(Path(data_dir).expanduser().resolve())]
    if force:
        inner.append("--force")
    argv += [spec.ref, *inner]

    rundir = RunDir(run)
    before = _manifest_fingerprints(rundir)
    t0 = time.time()
    say(console, f"building {experiment.name} in {spec.ref} ({eng.name})")
    eng.stream(argv, f"build in {spec.ref}", console, echo=True)
    _stamp_manifest(rundir, before, t0, spec, eng)
    return run


def _manifest_fingerprints(rundir: RunDir) -> dict[str, str]:
    """artifact id -> sha256 of the manifest as it is now (empty when there is none yet)."""
    if not rundir.manifest.is_file():
        return {}
    return {a.id: a.sha256 for a in rundir.load_manifest().artifacts}


def _stamp_manifest(rundir: RunDir, before: dict[str, str], started: float, spec: ImageSpec, eng: Engine) -> None:
    """Add ``toolchain.container`` to each record the containerised build wrote (new, changed or touched files)."""
    if not rundir.manifest.is_file():
        raise HarnessError(f"build in {spec.ref} finished but wrote no {rundir.manifest}")
    manifest = rundir.load_manifest()
    labels = eng.image_labels(spec.ref)
    stamp = {
        "image": spec.ref,
        "image_id": eng.image_id(spec.ref),
        "engine": eng.name,
        "versions": {
            k.removeprefix("io.compleak."): v for k, v in labels.items() if k.startswith("io.compleak.") and v
        },
    }
    changed = False
    for rec in manifest.artifacts:
        path = rundir.artifact_path(rec)
        written = before.get(rec.id) != rec.sha256 or (path.is_file() and path.stat().st_mtime >= started - 1)
        if written:
            rec.toolchain["container"] = stamp
            changed = True
    if changed:
        manifest.save(rundir.manifest)
