"""Results independent of where they ran (issue 25, item 6; docs/scale.md, "Results independent of where they ran").

One config, built three times at once, each in its own folder: serially (``--no-ray``) from a copy of the checkout
at another path, on an embedded Ray with ``--workers 2``, and on a two-node Ray cluster (``--ray-address``, the
loopback cluster of ``tests/test_scale.py``: token authentication, its own temp dir) with ``--workers 1``. Every
artifact -- TF-Lite, and the torch formats ``.pte``, ``.ptl``, ``.onnx``, fp32 and quantized, a k-means-clustered
variant among them -- must have the same sha256 in the three manifests and the same bytes on disk, and every record
must be the same, ``build`` (what the bytes depended on: threads, op determinism, device) included. The config sets
no thread count: the default ``[build] threads = 1`` applies everywhere.

Real builds, real Ray, no mocks. ``COMPLEAK_REPRO_TOML`` builds another config instead (e.g. ``tests/data/tiny.toml``
with ``n_shadows = 3``, the issue's measurement); ``COMPLEAK_REPRO_REPORT`` names a JSON file that receives the
figures (identical artifacts of how many, per executor), written before anything is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_scale import RayCluster, ray_cluster, ray_env  # noqa: F401  (ray_cluster: the module's cluster fixture)

from rundir import sha256_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "rundir", "devices", "compleak")

#: artifacts that may differ between executors, as "framework/format" -> why. Empty: every format of both frameworks
#: is bit-identical serially, on an embedded Ray and on a cluster (no framework had to be let off).
NOT_DETERMINISTIC: dict[str, str] = {}

#: the smallest config with every format: TF-Lite fp32 and full-integer int8; torch .pte/.ptl/.onnx of the fp32
#: model and of a k-means-clustered (scikit-learn's OpenMP pool), fine-tuned, dynamic-int8 model; two owners
REPRO_TOML = """
[experiment]
name = "repro"
seed = 5

[data]
dataset = "digits"

[splits]
target_in = 100
target_out = 100
shadow_in = 100
shadow_out = 100
n_shadows = 1

[model]
arch = "cnn-small"

[train]
epochs = 1
batch_size = 32
device = "cpu"

[compress]
finetune_epochs = 1
representative_samples = 50
tf = ["original", "int8"]
torch = ["original", "cluster-4+dynamic-int8"]

[export]
frameworks = ["tf", "torch"]
torch_formats = ["pte", "ptl", "onnx"]
"""

SERIAL = "serial (--no-ray), from a copy of the checkout at another path"
EMBEDDED = "embedded Ray, --workers 2"
CLUSTER = "Ray cluster (--ray-address, 2 nodes), --workers 1"


def _source_copy(dest: Path) -> Path:
    """The packages this process imports (this checkout's, unless ``PYTHONPATH`` puts another first) copied to
    ``dest``, another path: the files must not name where the code lies."""
    import harness

    source = Path(harness.__file__).resolve().parents[1]
    for pkg in PACKAGES:
        shutil.copytree(source / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


class _Build:
    """``compleak build`` in a subprocess (output to a log file beside the run)."""

    def __init__(self, cfg: Path, out: Path, cwd: Path, *extra: str, code: Path | None = None) -> None:
        env = ray_env()
        if code is not None:
            env["PYTHONPATH"] = str(code)  # ahead of the editable install: the copy is what runs
        self.out, self.log = out, out.with_name(out.name + ".log")
        for folder in (cwd, out.parent):
            folder.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "build", str(cfg), "--out", str(out), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            )  # fmt: skip
        self.started = time.monotonic()
        self.seconds = 0.0

    def wait(self) -> None:
        rc = self.proc.wait(timeout=1800)
        self.seconds = time.monotonic() - self.started
        assert rc == 0, f"{self.out}: exit {rc}\n{self.log.read_text()[-3000:]}"


def _config(tmp: Path) -> Path:
    cfg = tmp / "repro.toml"
    given = os.environ.get("COMPLEAK_REPRO_TOML")
    cfg.write_text(Path(given).read_text() if given else REPRO_TOML)
    return cfg


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster) -> dict[str, Path]:  # noqa: F811
    """The three builds, run at the same time (their bytes must not depend on the load either)."""
    tmp = tmp_path_factory.mktemp("repro")
    cfg = _config(tmp)
    code = _source_copy(tmp / "elsewhere" / "checkout")
    probe = subprocess.run([sys.executable, "-c", "import harness; print(harness.__file__)"], check=False,
                           capture_output=True, text=True, cwd=code, env={**ray_env(), "PYTHONPATH": str(code)})
    assert probe.stdout.strip().startswith(str(code)), probe.stdout + probe.stderr
    started = {
        SERIAL: _Build(cfg, tmp / "a" / "serial", code, "--no-ray", code=code),
        EMBEDDED: _Build(cfg, tmp / "b" / "run" / "embedded", tmp / "b", "--workers", "2"),
        CLUSTER: _Build(cfg, tmp / "c" / "cluster", tmp / "c", "--ray-address", ray_cluster.address, "--workers", "1"),
    }
    for b in started.values():
        b.wait()
    for name, b in started.items():
        print(f"{name}: {b.seconds:.1f} s")
    return {name: b.out for name, b in started.items()}


def _records(run: Path) -> dict[str, dict]:
    raw = json.loads((run / "manifest.json").read_text())
    return {a["id"]: a for a in raw["artifacts"]}


def _comparison(reference: Path, other: Path) -> dict:
    """How many of ``reference``'s artifacts ``other`` has with the same sha256 (manifest) and bytes (file)."""
    ra, rb = _records(reference), _records(other)
    same = [i for i in ra if i in rb and ra[i]["sha256"] == rb[i]["sha256"]
            and (reference / ra[i]["path"]).read_bytes() == (other / rb[i]["path"]).read_bytes()]  # fmt: skip
    differing = sorted(set(ra) - set(same))
    return {"identical": len(same), "of": len(ra), "differing": differing,
            "differing_formats": sorted({f"{ra[i]['framework']}/{ra[i]['format']}" for i in differing})}


def _report(builds: dict[str, Path]) -> dict:
    ref = builds[SERIAL]
    recs = _records(ref)
    formats: dict[str, int] = {}
    for r in recs.values():
        formats[f"{r['framework']}/{r['format']}"] = formats.get(f"{r['framework']}/{r['format']}", 0) + 1
    return {
        "config": os.environ.get("COMPLEAK_REPRO_TOML") or "tests/test_exec_reproducible.py REPRO_TOML",
        "artifacts": len(recs),
        "formats": formats,
        "against_serial": {name: _comparison(ref, run) for name, run in builds.items() if name != SERIAL},
    }


@pytest.mark.slow
def test_every_artifact_is_bit_identical_serially_on_embedded_ray_and_on_a_cluster(builds: dict[str, Path]) -> None:
    report = _report(builds)
    out = os.environ.get("COMPLEAK_REPRO_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    for name, c in report["against_serial"].items():
        print(f"{name}: {c['identical']} of {c['of']} artifacts identical to the serial build's")
    assert set(report["formats"]) >= {"tf/tflite", "torch/pte", "torch/ptl", "torch/onnx"}
    ref = _records(builds[SERIAL])
    for name, run in builds.items():
        other = _records(run)
        assert list(other) == list(ref), name  # the same artifacts, in the same (plan) order
        c = _comparison(builds[SERIAL], run)
        let_off = [f for f in c["differing_formats"] if f in NOT_DETERMINISTIC]
        assert c["differing_formats"] == let_off, f"{name}: {c['differing']} differ from the serial build's"
        for aid, rec in ref.items():
            if f"{rec['framework']}/{rec['format']}" in NOT_DETERMINISTIC:
                continue
            assert other[aid] == rec, (name, aid)  # every field: sha256, host accuracy, build settings, ...
            assert sha256_file(run / other[aid]["path"]) == rec["sha256"], (name, aid)
        for f in ("splits.npz", "threat_model.json", "experiment.toml"):
            assert (run / f).read_bytes() == (builds[SERIAL] / f).read_bytes(), (name, f)


@pytest.mark.slow
def test_what_the_bytes_depended_on_is_in_every_record(builds: dict[str, Path]) -> None:
    for run in builds.values():
        for rec in _records(run).values():
            assert rec["build"] == {"threads": 1, "deterministic": True, "device": "cpu"}, rec["id"]


@pytest.mark.slow
def test_no_artifact_names_where_it_was_built(builds: dict[str, Path]) -> None:
    """No file holds a path of the machine that built it (the checkout, its copy, the venv, the run folder), and a
    ``.ptl`` archive has its fixed root folder (``archive/``), not a temp file's random name."""
    import zipfile

    serial = builds[SERIAL]
    places = {str(ROOT), str(Path(sys.prefix)), str(serial.parent.parent), "/tmp/"}
    for rec in _records(serial).values():
        data = (serial / rec["path"]).read_bytes()
        found = [p for p in places if p.encode() in data]
        if rec["format"] == "ptl":
            with zipfile.ZipFile(serial / rec["path"]) as z:
                assert {n.split("/", 1)[0] for n in z.namelist()} == {"archive"}, rec["id"]
                found += [f"{n}: {p}" for n in z.namelist() for p in places if p.encode() in z.read(n)]
                assert not [n for n in z.namelist() if n.endswith(".debug_pkl")], rec["id"]
        assert not found, (rec["id"], found)


def test_build_threads_is_a_config_key_in_every_build_key(tmp_path: Path) -> None:
    from harness.build.stage import PlannedArtifact, build_key
    from harness.config import ConfigError, load_experiment

    cfg = tmp_path / "e.toml"
    cfg.write_text(REPRO_TOML)
    base = load_experiment(cfg)
    assert (base.build.threads, base.build.deterministic) == (1, True)  # fixed defaults, not the machine's cores
    item = PlannedArtifact("torch", "target", None, "original", "pte")
    key = build_key(base, item, "d", "s")
    for extra, threads, det in (("[build]\nthreads = 4\n", 4, True), ("[build]\ndeterministic = false\n", 1, False)):
        cfg.write_text(REPRO_TOML + extra)
        other = load_experiment(cfg)
        assert (other.build.threads, other.build.deterministic) == (threads, det)
        assert build_key(other, item, "d", "s") != key  # the bytes depend on it: so does the cache key
    cfg.write_text(REPRO_TOML.replace('device = "cpu"', 'device = "cpu"\nthreads = 3'))
    assert load_experiment(cfg).build.threads == 3  # train.threads: the older spelling
    cfg.write_text(REPRO_TOML.replace('device = "cpu"', 'device = "cpu"\nthreads = 3') + "[build]\nthreads = 2\n")
    with pytest.raises(ConfigError, match=r"train\.threads = 3 and build\.threads = 2 disagree"):
        load_experiment(cfg)
    for bad, where in (("threads = 0", r"\[build\.threads\] must be"), ("cores = 2", r"\[build\.cores\] unknown key")):
        cfg.write_text(REPRO_TOML + f"[build]\n{bad}\n")
        with pytest.raises(ConfigError, match=where):
            load_experiment(cfg)


def test_ptl_and_onnx_bytes_do_not_depend_on_the_process_or_folder(tmp_path: Path) -> None:
    """Quick check of the two exporters' fixes, in this process: a ``.ptl`` written after other traces (TorchScript's
    process-wide name mangling) and into another folder (the temp file's random name) has the same bytes, and
    neither a ``.ptl`` nor an ``.onnx`` holds a path of this machine."""
    import torch

    from harness.build.torch_export import export_onnx, export_ptl
    from harness.build.torch_zoo import build_model

    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 8, 8), 10).eval()
    example = torch.randn(32, 1, 8, 8)
    spec = {"inputs": [{"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}]}
    first, second = tmp_path / "one" / "m.ptl", tmp_path / "two" / "other.ptl"
    for p in (first, second):
        p.parent.mkdir()
    export_ptl(model, example, first, spec)
    torch.jit.trace(build_model("cnn-small", (1, 8, 8), 10).eval(), example)  # more classes in the global unit
    export_ptl(model, example, second, spec)
    assert first.read_bytes() == second.read_bytes()
    export_onnx(model, example, tmp_path / "m.onnx")
    places = [str(ROOT), str(Path(sys.prefix)), str(tmp_path)]
    for f in (first, tmp_path / "m.onnx"):
        assert not [p for p in places if p.encode() in f.read_bytes()], f
    import zipfile

    with zipfile.ZipFile(first) as z:
        assert not [p for n in z.namelist() for p in places if p.encode() in z.read(n)]
    from torch.jit.mobile import _load_for_lite_interpreter

    assert torch.equal(_load_for_lite_interpreter(str(first))(example), model(example))  # still the same model
