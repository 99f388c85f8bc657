"""`compleak compare RUN` and the comparison in reports built from manual stages (collect, attack, report).

Fast tests use ``make_synthetic_run`` (tests/test_report.py: outputs on ``local`` and on an SSH device id that differ
slightly, result rows on both); the slow one builds nothing new but collects the tiny run on the host and on a real
OpenSSH server, runs the attack stage, and lets `compleak report` compare before it writes the page.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_fixtures import TreeState, cli, cli_refuses, copy_run
from test_report import DEVICE, FAST_ATTACKS, make_synthetic_run

from rundir import device_dirname

DEVICE_DIR = "ssh_tester@127.0.0.1_2222"


@pytest.fixture(scope="module")
def manual_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outputs on the host and a device, attack results on both, never compared."""
    root = tmp_path_factory.mktemp("cmp") / "run"
    root.mkdir()
    make_synthetic_run(root, n=60, variants=["original", "prune-0.8", "int8"], extra_toml=FAST_ATTACKS)
    return root


def test_compare_command_writes_resumes_and_forces(manual_run: Path, tmp_path: Path) -> None:
    run = copy_run(manual_run, tmp_path / "run")
    res = cli(["compare", str(run)])
    assert res.exit_code == 0, res.output
    out = run / "compare" / f"{DEVICE_DIR}.json"
    c = json.loads(out.read_text())
    assert c["device"] == DEVICE and len(c["artifacts"]) == 6 and c["host_shadow_device_target"]
    mtime = out.stat().st_mtime_ns
    again = cli(["compare", str(run)])
    assert again.exit_code == 0 and "up to date" in again.output and out.stat().st_mtime_ns == mtime
    forced = cli(["compare", str(run), "--device", DEVICE, "--force"])
    assert forced.exit_code == 0 and "up to date" not in forced.output and out.stat().st_mtime_ns > mtime


def test_compare_command_refuses_bad_input(manual_run: Path, tmp_path: Path) -> None:
    with TreeState(manual_run, tmp_path):
        cli_refuses(["compare", str(manual_run), "--device", "local"], "must not be 'local'")
        cli_refuses(["compare", str(manual_run), "--device", "adb://nope"], "no outputs for adb://nope",
                    "compleak collect")  # fmt: skip
        cli_refuses(["compare", str(tmp_path / "nope")], "no such run directory")
    run = copy_run(manual_run, tmp_path / "hostless")
    shutil.rmtree(run / "outputs" / "local")
    with TreeState(run):
        cli_refuses(["compare", str(run)], "collected but not the host", "--device local")


def test_compare_command_with_only_the_host(manual_run: Path, tmp_path: Path) -> None:
    run = copy_run(manual_run, tmp_path / "run")
    shutil.rmtree(run / "outputs" / DEVICE_DIR)
    with TreeState(run):
        res = cli(["compare", str(run)])
    assert res.exit_code == 0 and "nothing to compare: only the host" in res.output


def test_report_from_manual_stages_includes_the_comparison(manual_run: Path, tmp_path: Path) -> None:
    run = copy_run(manual_run, tmp_path / "run")
    assert not (run / "compare").exists()
    res = cli(["report", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "compare" / f"{DEVICE_DIR}.json").is_file()
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert DEVICE in summary["host_vs_device"] and summary["host_vs_device"][DEVICE]["n_artifacts"] == 6
    assert "no device to compare" not in (run / "report" / "index.html").read_text()
    # rerun: the comparison is up to date and not redone
    again = cli(["report", str(run)])
    assert again.exit_code == 0 and "up to date" in again.output

    bare = copy_run(manual_run, tmp_path / "bare")
    res = cli(["report", str(bare), "--no-compare"])
    assert res.exit_code == 0 and not (bare / "compare").exists()
    assert json.loads((bare / "report" / "summary.json").read_text())["host_vs_device"] == {}


def test_report_notes_devices_it_cannot_compare(manual_run: Path, tmp_path: Path) -> None:
    run = copy_run(manual_run, tmp_path / "run")
    shutil.rmtree(run / "outputs" / "local")
    res = cli(["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "not compared with the host: the host has no outputs" in " ".join(res.output.split())
    assert not (run / "compare").exists() and (run / "report" / "index.html").is_file()


@pytest.mark.slow
@pytest.mark.ssh
def test_manual_stages_on_host_and_ssh_device_report_the_comparison(
    tiny_run: Path, sshd_server, tmp_path: Path  # noqa: ANN001 (tests/sshd_fixtures.py SshServer)
) -> None:
    """collect (host: targets and shadows; SSH device: targets) -> attack -> report: the report compares first."""
    run = copy_run(tiny_run, tmp_path / "run")
    with open(run / "experiment.toml", "a") as fh:
        fh.write('\n[attack]\nbootstrap = 20\nbaselines = ["rmia"]\n')
    targets = "tf-target-original.tflite,tf-target-int8.tflite"
    shadows = "tf-shadow0-original.tflite,tf-shadow0-int8.tflite"
    res = cli(["collect", str(run), "--device", "local", "--artifacts", f"{targets},{shadows}"])
    assert res.exit_code == 0, res.output
    res = cli(["collect", str(run), "--device", sshd_server.uri, "--artifacts", targets,
               "--identity", str(sshd_server.identity), "--known-hosts", str(sshd_server.known_hosts)])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = cli(["attack", str(run)])
    assert res.exit_code == 0, res.output
    res = cli(["report", str(run)])
    assert res.exit_code == 0, res.output
    dev = sshd_server.device_id
    c = json.loads((run / "compare" / f"{device_dirname(dev)}.json").read_text())
    assert c["device"] == dev and {a["artifact"] for a in c["artifacts"]} == set(targets.split(","))
    assert all(a["n"] == 600 for a in c["artifacts"])  # digits: 300 members + 300 non-members
    assert c["host_shadow_device_target"], "the auditor's case: host shadows applied to the device's targets"
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["host_vs_device"][dev]["n_artifacts"] == 2
    assert "no device to compare" not in (run / "report" / "index.html").read_text()
