"""The report over a synthetic run directory, checked as data and as a page in headless Chromium.

The run directory is written through ``rundir`` (the same contract every stage uses): splits, a manifest
with target and shadow artifacts, outputs on ``local`` and on an SSH device that differs slightly, attack results
whose AUCs and ROC points are computed from per-example scores, provenance, and a compare file made by harness.compare.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import roc_auc_score
from sshd_fixtures import free_port

from compleak.metrics import roc_points
from harness.compare import compare_device
from harness.report.load import resolvable
from harness.report.stage import write_report
from rundir import (
    ArtifactRecord,
    Manifest,
    OutputBatch,
    ResultRow,
    RunDir,
    Splits,
    atomic_write_json,
    save_results,
)

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "ssh://tester@127.0.0.1:2222"
VARIANTS = ["original", "prune-0.6", "prune-0.8", "cluster-4", "cluster-16", "int8"]
HOSTILE = "<script>alert('x')</script>&\"quote\""
FAST_ATTACKS = '[attack]\nbootstrap = 20\nbaselines = ["rmia"]\n'  # small settings for the real attack stage


def _tensor(name: str, shape: list[int]) -> dict:
    return {"name": name, "shape": shape, "dtype": "float32"}


def make_synthetic_run(
    root: Path, n: int = 300, seed: int = 0, variants: list[str] = VARIANTS, extra_toml: str = ""
) -> RunDir:
    """A complete run directory with members sharper than non-members; returns its RunDir."""
    rng = np.random.default_rng(seed)
    rd = RunDir(root)
    c = 10
    total = 4 * n
    labels = rng.integers(0, c, total).astype(np.int64)
    perm = rng.permutation(total)
    splits = Splits(labels, perm[:n], perm[n : 2 * n], [perm[2 * n : 3 * n]], [perm[3 * n :]])
    splits.save(rd.splits)
    (root / "experiment.toml").write_text('[experiment]\nname = "synthetic-demo"\n' + extra_toml)
    records = []
    for role, tag in (("target", "target"), ("shadow", "shadow0")):
        for k, v in enumerate(variants):
            aid = f"tf-{tag}-{v}.tflite"
            path = rd.artifacts_dir / aid
            path.parent.mkdir(parents=True, exist_ok=True)
            blob = rng.bytes(1000 + 100 * k)
            path.write_bytes(blob)
            comp: dict = {"steps": [v]}
            if v.startswith("prune-"):
                comp["sparsity"] = float(v.split("-")[1])
            if v.startswith("cluster-"):
                comp["clusters"] = int(v.split("-")[1])
            records.append(
                ArtifactRecord(
                    id=aid,
                    role=role,
                    shadow=0 if role == "shadow" else None,
                    variant=v,
                    framework="tf",
                    format="tflite",
                    path=f"artifacts/{aid}",
                    sha256=f"{k:02d}" + "ab" * 31,
                    bytes=len(blob),
                    inputs=[_tensor("x", [-1, 28, 28, 1])],
                    outputs=[_tensor("logits", [-1, c])],
                    compression=comp,
                    host_accuracy={"train": 0.95 - 0.01 * k, "test": 0.88 - 0.01 * k},
                )
            )
    Manifest(artifacts=records).save(rd.manifest)

    for device in ("local", DEVICE):
        rows = []
        for a in records:
            ids = splits.query_ids(a.role, a.shadow)
            member = np.isin(ids, splits.members(a.role, a.shadow))
            logits = rng.normal(0, 1, (len(ids), c)).astype(np.float32)
            sharp = 2.0 + 0.5 * variants.index(a.variant) / len(variants)
            logits[np.arange(len(ids)), labels[ids]] += np.where(member, sharp, 1.0)
            if device != "local":  # a device runtime that rounds differently on some rows
                host = RunDir(root).load_outputs("local", a.id)
                logits = host.values.copy()
                bump = rng.random(len(ids)) < 0.3
                logits[bump] += rng.normal(0, 1e-3, (int(bump.sum()), c)).astype(np.float32)
            OutputBatch(ids, logits).save(rd.output_npz(device, a.id))
            atomic_write_json(
                rd.output_provenance(device, a.id),
                {
                    "artifact": {"id": a.id, "sha256": a.sha256, "format": a.format, "variant": a.variant},
                    "device": {"id": device, "arch": "x86_64", "os": "Linux", "note": HOSTILE},
                    "runtime": {"name": "ai-edge-litert", "version": "2.3.0"},
                    "delegate": None,
                    "threads": 1,
                    "batch_size": 512,
                    "wall_seconds_per_batch": [0.01, 0.012],
                },
            )
            if a.role != "target":
                continue
            out = RunDir(root).load_outputs(device, a.id).values
            z = out - out.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            score = p[np.arange(len(ids)), labels[ids]]
            for family, method in (("NR", "posterior-lr"), ("SR", "sr2-lr")):
                if family == "SR" and a.variant == "original":
                    continue
                s = score + (0.05 if family == "SR" else 0.0) * member * rng.random(len(ids))
                auc = float(roc_auc_score(member, s))
                rows.append(
                    ResultRow(
                        family=family,
                        method=method,
                        variant=a.variant,
                        auc=auc,
                        balanced_accuracy=0.5 + (auc - 0.5) / 2,
                        tpr_at_fpr={"0.001": None, "0.01": 0.03},
                        auc_ci=[auc - 0.03, min(auc + 0.03, 1.0)],
                        n_members=n,
                        n_nonmembers=n,
                        artifact_id=a.id,
                        framework="tf",
                        format="tflite",
                        roc=roc_points(member.astype(int), s),
                    )
                )
        mr = ["prune-0.6", "prune-0.8", "cluster-4"]
        rows.append(
            ResultRow(
                family="MR",
                method="fusion-mlp" if device == "local" else HOSTILE,
                variant=mr,
                auc=0.81,
                balanced_accuracy=0.7,
                tpr_at_fpr={"0.001": None, "0.01": 0.05},
                auc_ci=[0.78, 0.84],
                n_members=n,
                n_nonmembers=n,
            )
        )
        save_results(rd.results(device), rows)
    atomic_write_json(
        root / "threat_model.json",
        {
            "summary": "black-box queries; shadow side is an approximation",
            "shadow_models": {"mode": "trained", "note": HOSTILE},
        },
    )
    return rd


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    make_synthetic_run(root, n=150, extra_toml=FAST_ATTACKS)
    compare_device(root, DEVICE, console=Console(quiet=True))
    exp = root / "experiment.toml"  # a received run's raw name (no valid config name: issue 11) is shown escaped
    exp.write_text(exp.read_text().replace('"synthetic-demo"', '"synthetic <demo>"'))
    return root


def test_report_files_and_summary(synthetic_run: Path) -> None:
    console = Console(record=True, width=160)
    index = write_report(synthetic_run, console=console)
    assert index == synthetic_run / "report" / "index.html"
    summary = json.loads((synthetic_run / "report" / "summary.json").read_text())
    assert set(summary["devices"]) == {"local", DEVICE}
    # the worst case is the highest AUC of every results row on every device
    all_rows = [r for d in ("local", DEVICE) for r in json.loads(RunDir(synthetic_run).results(d).read_text())]
    assert summary["worst"]["auc"] == pytest.approx(max(r["auc"] for r in all_rows))
    assert summary["worst"]["resolvable"] == {"0.001": False, "0.01": True}  # 300 non-members cannot resolve 0.1%
    # one best row per target variant and device
    assert len(summary["best_per_target"]) == 2 * len(VARIANTS)
    assert {p["test_accuracy"] for p in summary["best_per_target"]} <= {0.88 - 0.01 * k for k in range(len(VARIANTS))}
    assert DEVICE in summary["divergence"] and len(summary["divergence"][DEVICE]) == 2 * len(VARIANTS)
    verdict = summary["host_vs_device"][DEVICE]
    assert verdict["n_artifacts"] == 2 * len(VARIANTS) and verdict["n_bit_identical"] == 0
    assert 0 < verdict["max_abs_diff"] < 0.01 and verdict["max_abs_delta_auc"] < 0.05
    text = console.export_text()
    assert "AUC" in text and "worst:" in text

    page = index.read_text()
    # self-contained: no external URL anywhere, figures inline
    assert not re.search(r"(src|href)\s*=\s*[\"'](https?:|//)", page)
    assert "http://" not in page and "https://" not in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) >= 4  # ROC NR, ROC SR, sparsity, clusters, divergence
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    # text from the run directory is escaped, never markup
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "synthetic &lt;demo&gt;" in page
    assert "not resolvable" in page and "needs at least 1000" in page
    assert "Can the host&#x27;s numbers be trusted" in page or "Can the host's numbers be trusted" in page
    assert "approximation" in page  # the recorded threat model is shown
    assert "ai-edge-litert 2.3.0" in page and "00abababababababab"[:16] in page  # provenance: runtime, sha256


def test_verdict_first_in_the_summary_last_in_the_terminal_on_top_of_the_page(synthetic_run: Path) -> None:
    console = Console(record=True, width=160)
    index = write_report(synthetic_run, console=console)
    summary = json.loads((synthetic_run / "report" / "summary.json").read_text())
    assert next(iter(summary)) == "verdict"
    v, per = summary["verdict"], summary["best_per_target"]
    assert v["targets"] == len(per)  # every target's outputs differ here: nothing collapses
    assert v["leaking"] == sum(1 for p in per if p["auc_ci"][0] > 0.5) > 0
    assert v["low_fpr"] == 0.01  # 150 non-members resolve 1%, not 0.1%
    assert v["worst_by_auc"]["auc"] == max(p["auc"] for p in per)
    orig = {p["device"]: p["test_accuracy"] for p in per if p["variant"] == "original"}
    over = {(p["device"], p["variant"]) for p in per
            if p["variant"] != "original" and orig[p["device"]] - p["test_accuracy"] > 0.02}
    assert over and {(f["device"], f["variant"]) for f in v["accuracy_flagged"]} == over
    for row in v["rows"]:
        o = next(r for r in v["rows"] if r["device"] == row["device"] and r["variant"] == "original")
        if row["variant"] == "original":
            assert row["vs_original"] is None
            continue
        assert row["vs_original"]["delta_auc"] == pytest.approx(row["auc"] - o["auc"])
        apart = row["auc_ci"][0] > o["auc_ci"][1] or row["auc_ci"][1] < o["auc_ci"][0]
        assert (row["vs_original"]["change"] != "no significant change") == apart
    text = console.export_text()
    assert text.rindex("\nverdict: LEAKS: ") > text.rindex("\nthreat model")  # the last thing printed
    page = index.read_text()
    assert 'class="headline verdict"' in page and page.index("headline verdict") < page.index("Worst leakage")


def test_identical_outputs_collapse_into_one_verdict_row(synthetic_run: Path) -> None:
    from harness.report.verdict import build_verdict

    rd = RunDir(synthetic_run)
    per = [p for p in json.loads((synthetic_run / "report" / "summary.json").read_text())["best_per_target"]
           if p["device"] == "local"] if (synthetic_run / "report" / "summary.json").is_file() else []
    if not per:
        write_report(synthetic_run, console=Console(quiet=True))
        per = [p for p in json.loads((synthetic_run / "report" / "summary.json").read_text())["best_per_target"]
               if p["device"] == "local"]
    twin = dict(per[0], where="torch/ptl")  # another format whose outputs are the same bytes
    v = build_verdict(rd, [*per, twin])
    assert v["targets"] == len(per)
    first = next(r for r in v["rows"] if r["variant"] == per[0]["variant"])
    assert first["formats"] == [per[0]["where"], "torch/ptl"]


def test_resolvable_rule() -> None:
    assert resolvable(1000, 0.001) and not resolvable(999, 0.001)
    assert resolvable(100, 0.01) and not resolvable(99, 0.01)


def test_report_without_attacks_or_devices(tmp_path: Path) -> None:
    rd = make_synthetic_run(tmp_path, n=40)
    shutil.rmtree(tmp_path / "attacks")
    shutil.rmtree(rd.outputs_dir(DEVICE))
    index = write_report(tmp_path, console=Console(quiet=True))
    page = index.read_text()
    assert "No attack results yet" in page and "no device to compare" in page


def test_report_templates_are_packaged_and_autoescape_every_field(tmp_path: Path) -> None:
    """The page comes from the Jinja2 templates shipped as package data, and autoescaping covers what the run
    directory controls in every context: a paragraph, a table's key column, preformatted JSON and plain cells."""
    from importlib import resources

    shipped = {p.name for p in resources.files("harness.report").joinpath("templates").iterdir()}
    assert {"base.html.j2", "report.html.j2", "seeds.html.j2", "_macros.html.j2"} <= shipped
    make_synthetic_run(tmp_path, n=40)
    bad = '"><img src=x onerror=alert(1)>'
    atomic_write_json(tmp_path / "threat_model.json", {"summary": bad, bad: [bad], "access": bad})
    page = write_report(tmp_path, console=Console(quiet=True)).read_text()
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert page.count("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;") == 4  # summary, key, JSON value, access


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    from harness.errors import HarnessError
    from rundir import ContractError

    with pytest.raises(HarnessError, match="no such run directory"):
        write_report(tmp_path / "missing", console=Console(quiet=True))
    rd = make_synthetic_run(tmp_path, n=40)
    rd.results("local").write_text("[{not json")
    with pytest.raises(ContractError, match=r"results\.json: invalid JSON"):
        write_report(tmp_path, console=Console(quiet=True))


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class _CDP:
    """A minimal DevTools-protocol session over websocket-client (request/response plus collected events)."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == name:
                return e
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == name:
                return msg
        raise TimeoutError(name)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (scripts/setup.sh --test)")
def test_report_renders_in_headless_chromium(synthetic_run: Path, tmp_path: Path) -> None:
    index = write_report(synthetic_run, console=Console(quiet=True))
    port = free_port()
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        targets: list[dict] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                time.sleep(0.3)
        assert targets, "chromium did not expose a page target"
        cdp = _CDP(targets[0]["webSocketDebuggerUrl"])
        cdp.call("Runtime.enable")
        cdp.call("Log.enable")
        cdp.call("Page.enable")
        cdp.call("Page.navigate", url=index.as_uri())
        cdp.wait_event("Page.loadEventFired", timeout=60)
        check = cdp.call(
            "Runtime.evaluate",
            expression="JSON.stringify({title: document.title, imgs: Array.from(document.images).map("
            "i => [i.complete, i.naturalWidth]), tables: document.querySelectorAll('table').length,"
            " h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),"
            " scripts: document.scripts.length, height: document.body.scrollHeight})",
            returnByValue=True,
        )
        info = json.loads(check["result"]["value"])
        assert info["title"].startswith("compleak report")
        assert len(info["imgs"]) >= 4
        assert all(done and width > 0 for done, width in info["imgs"]), info["imgs"]
        assert info["tables"] >= 5 and info["scripts"] == 0
        assert "Summary" in info["h2"] and "Host versus device" in info["h2"] and "Provenance" in info["h2"]
        shot = cdp.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1400, "height": min(info["height"], 12000), "scale": 1},
        )
        out = ROOT / "test-artifacts" / "report.png"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        assert out.stat().st_size > 10_000
        errors = [
            e
            for e in cdp.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
        ]
        assert not errors, errors
        cdp.ws.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
