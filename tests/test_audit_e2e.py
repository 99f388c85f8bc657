"""End to end: ``compleak audit`` over ``local`` and a real OpenSSH device, then again to prove it resumes.

A small config (scikit-learn digits, cnn-small in TF-Lite, three variants, one shadow, NR/SR/MR and RMIA) is built,
collected on the host and on the loopback/namespaced sshd of ``tests/sshd_fixtures.py``, attacked on both,
compared and reported. A second audit of the same run redoes nothing (no file rewritten). The demo's missing-data
message is checked with an empty data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from devices.spec import DeviceSpec
from harness.cli.main import app
from rundir import RunDir, device_dirname, load_results

AUDIT_TOML = """
[experiment]
name = "audit-e2e"
seed = 3

[data]
dataset = "digits"

[splits]
target_in = 150
target_out = 150
shadow_in = 150
shadow_out = 150
n_shadows = 1

[train]
epochs = 2
batch_size = 32
lr = 0.003

[compress]
finetune_epochs = 1
representative_samples = 50
tf = ["original", "prune-0.8", "int8"]
torch = []

[export]
frameworks = ["tf"]

[attack]
families = ["NR", "SR", "MR"]
baselines = ["rmia"]
bootstrap = 50
"""


def _snapshot(run: Path) -> dict[str, int]:
    """mtime of every file of the run except the report (which is rewritten on every audit by design)."""
    return {
        str(p.relative_to(run)): p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and "report" not in p.relative_to(run).parts
    }


@pytest.mark.slow
@pytest.mark.ssh
def test_audit_local_and_ssh_then_resume(tmp_path: Path, sshd_server) -> None:
    cfg = tmp_path / "audit.toml"
    cfg.write_text(AUDIT_TOML)
    run = tmp_path / "run"
    dev = sshd_server.uri
    result = CliRunner().invoke(
        app,
        [
            "audit",
            str(cfg),
            "--device",
            dev,
            "--out",
            str(run),
            "--identity",
            str(sshd_server.identity),
            "--known-hosts",
            str(sshd_server.known_hosts),
            "--shadows-on-devices",  # the device also runs the reference artifacts (compared with the host below)
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "report:" in result.output and "remaining" in result.output

    rd = RunDir(run)
    manifest = rd.load_manifest()
    targets = manifest.targets()
    assert {a.variant for a in targets} == {"original", "prune-0.8", "int8"}
    devices = dict(rd.collected_devices())
    assert len(devices) == 2 and "local" in devices
    dev_id = next(d for d in devices if d != "local")
    for d in ("local", dev_id):
        for a in manifest.artifacts:
            assert rd.output_npz(d, a.id).is_file(), (d, a.id)
        rows = load_results(rd.results(d))
        fams = {r.family for r in rows}
        assert {"NR", "SR", "MR", "baseline"} <= fams
        assert any(r.method == "mr-no-original" for r in rows) and any(r.method == "mr-fusion" for r in rows)
        assert all(0.0 <= r.auc <= 1.0 and len(r.auc_ci) == 2 for r in rows)

    comp = json.loads((run / "compare" / f"{device_dirname(dev_id)}.json").read_text())
    assert len(comp["artifacts"]) == len(manifest.artifacts)
    for a in comp["artifacts"]:  # same file, same runtime, same CPU: the SSH device reproduces the host exactly
        assert a["frac_bit_identical"] == 1.0 and a["max_abs_diff"] == 0.0 and a["argmax_flips"] == 0
    assert comp["leakage_deltas"] and all(abs(d["delta_auc"]) < 1e-12 for d in comp["leakage_deltas"])
    assert comp["host_shadow_device_target"], comp.get("host_shadow_device_target_note")

    summary = json.loads((run / "report" / "summary.json").read_text())
    assert set(summary["devices"]) == {"local", dev_id}
    assert len(summary["best_per_target"]) == 2 * len(targets)
    page = (run / "report" / "index.html").read_text()
    assert "Worst leakage" in page and "data:image/png;base64," in page and "https://" not in page

    # resume: a second audit finds every stage done and rewrites nothing outside the report
    before = _snapshot(run)
    console = Console(record=True, width=200)
    from harness.audit import audit_run

    index = audit_run(
        cfg, [DeviceSpec(dev, identity=sshd_server.identity, known_hosts=sshd_server.known_hosts)], out=run,
        console=console, shadows_on_devices=True,
    )
    assert index == run / "report" / "index.html"
    assert _snapshot(run) == before
    text = console.export_text()
    assert "all 6 artifacts up to date" in text or "up to date" in text, text


def test_demo_without_fashion_mnist_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--data-dir", str(empty)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "apt-get install dataset-fashion-mnist" in lines[0] and "--data-dir" in lines[0]
    assert not (tmp_path / "demo").exists()  # nothing built before the data check


def test_audit_device_list_and_bad_uri(tmp_path: Path) -> None:
    from harness.collect.fanout import audit_devices
    from harness.config import load_experiment

    cfg = tmp_path / "audit.toml"
    cfg.write_text(AUDIT_TOML + '\n[[audit.devices]]\nuri = "ssh://pi@board:2222"\nidentity = "/keys/pi"\n')
    exp = load_experiment(cfg)
    devs = audit_devices(
        exp,
        ["local", "ssh://pi@board:2222?python=/opt/py/bin/python3", "adb://emulator-5554"],
        DeviceSpec("local", identity=Path("/keys/default")),
    )
    assert [d.device_id for d in devs] == ["local", "ssh://pi@board:2222", "adb://emulator-5554"]
    assert devs[1].spec.identity == Path("/keys/pi") and devs[2].spec.identity == Path("/keys/default")

    result = CliRunner().invoke(app, ["audit", str(cfg), "--device", "bogus://x", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bogus://x" in lines[0]
    assert not (tmp_path / "run").exists()  # rejected before any stage ran


def test_stage_progress_estimates_from_stages_that_ran() -> None:
    import time

    from harness.audit import _Stages

    console = Console(record=True, width=160)
    with _Stages(console, [("build", 2.0), ("collect", 1.0), ("attack", 3.0)]) as st:
        assert st.remaining_seconds() is None and st.eta() == "estimating…"
        st.run("build", 2.0, lambda: time.sleep(0.3))
        # 0.3 s for 2 units of weight -> 4 units to go take about 0.6 s
        assert st.remaining_seconds() == pytest.approx(4 * st.timings["build"] / 2)
        st.run("collect", 1.0, lambda: None, skip=True)  # already done: costs nothing, changes no rate
        assert st.remaining_seconds() == pytest.approx(3 * st.timings["build"] / 2)
        st.run("attack", 3.0, lambda: None)
    assert st.remaining_seconds() == 0.0
    assert "remaining 0:00:00 attack" in console.export_text()
