"""Progress on the long stages (issue 15): dataset downloads (bytes, a real https server) and compare (devices and
steps done, on a real copy of the tiny run)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from rich.console import Console
from test_hostile_caches import https_server  # noqa: F401  (a real https server on 127.0.0.1)

from harness.data import download_verified, rich_download_progress


def test_download_reports_bytes(https_server, tmp_path: Path) -> None:  # noqa: F811
    base, served = https_server
    served["body"] = os.urandom((5 << 19) + 7)  # three 1 MiB reads
    digest = hashlib.sha256(served["body"]).hexdigest()
    seen: list[tuple[int, int | None]] = []
    download_verified(f"{base}/file", tmp_path / "a.bin", digest, progress=lambda url, done, total: seen.append(
        (done, total)))  # fmt: skip
    size = len(served["body"])
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}), "bytes only grow"

    console = Console(record=True, width=120, force_terminal=False)
    with rich_download_progress(console) as progress:
        download_verified(f"{base}/file", tmp_path / "b.bin", digest, progress=progress)
    text = console.export_text()
    assert "download file" in text and "2.6/2.6 MB" in text, text


def test_compare_shows_devices_and_steps(tiny_run: Path, tmp_path: Path) -> None:
    """A second 'device' whose outputs are the host's (copied, provenance naming it): compare runs every step."""
    from hostile_fixtures import cli, copy_run

    from harness.compare import compare_run
    from rundir import RunDir

    run = copy_run(tiny_run, tmp_path / "run")
    rd = RunDir(run)
    ids = [a.id for a in rd.load_manifest().artifacts if a.format == "onnx" and a.variant == "original"]
    res = cli(["collect", str(run), "--artifacts", ",".join(ids)])
    assert res.exit_code == 0, res.output
    dev = "ssh://pi@board.lan:22"
    shutil.copytree(rd.outputs_dir("local"), rd.outputs_dir(dev))
    for prov in rd.outputs_dir(dev).glob("*.json"):
        data = json.loads(prov.read_text())
        data["device"]["id"] = dev
        prov.write_text(json.dumps(data))
    console = Console(record=True, width=160, force_terminal=False)
    written = compare_run(run, console=console)
    assert written and written[0].is_file()
    text = console.export_text()
    assert "compare: 1/1 devices" in text, text
    assert f"✓ {dev}" in text and f"{len(ids) + 1}/{len(ids) + 1}" in text, text
