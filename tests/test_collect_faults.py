"""Collect fault tolerance under Ray (issue 25, docs/scale.md "Faults"): a device's collect actor SIGKILLed in the
middle of its collect is restarted by Ray, its call retried, and the resumable collect finishes; the outputs equal
those of an uninterrupted, serial collect, file for file and array for array."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import digits_toml
from rich.console import Console

from rundir import RunDir


def _descendants(root: int) -> dict[int, bytes]:
    """pid -> command line of every live descendant of ``root``."""
    parent: dict[int, int] = {}
    cmd: dict[int, bytes] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd[int(d.name)] = (d / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    out: dict[int, bytes] = {}
    for pid in parent:
        p, hops = pid, 0
        while p in parent and p != root and hops < 64:
            p, hops = parent[p], hops + 1
        if p == root and pid != root:
            out[pid] = cmd[pid]
    return out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.build.stage import build_run

    root = tmp_path_factory.mktemp("faults")
    cfg = root / "faults.toml"
    cfg.write_text(digits_toml("faults", seed=9, n=150, shadows=2, torch=("original", "prune-0.5"),
                               formats=("onnx", "pte")))
    return build_run(cfg, out=root / "run", console=Console(quiet=True))  # default: serial


@pytest.mark.slow
@pytest.mark.ssh
def test_collect_actor_killed_mid_collect_is_retried_and_outputs_equal(
    small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    from sshd_fixtures import start_sshd

    from devices.spec import DeviceSpec
    from harness.collect.fanout import AuditDevice, collect_devices, prestart_collect_actors
    from harness.execution import ExecOptions, RayExecutor, SerialExecutor

    server = start_sshd(tmp_path / "sshd")
    try:
        device = AuditDevice(DeviceSpec(server.uri, identity=server.identity, known_hosts=server.known_hosts))
        runs = {name: tmp_path / name for name in ("uninterrupted", "killed")}
        for run in runs.values():
            shutil.copytree(small_run, run)
        quiet = Console(quiet=True)
        n_artifacts = len(RunDir(small_run).load_manifest().artifacts)
        with SerialExecutor() as ex:  # every artifact on the device (shadows too): a collect long enough to hit
            reference = collect_devices(runs["uninterrupted"], [device], ex, quiet, shadows_on_devices=True,
                                        batch_size=64)
        assert reference == {device.device_id: n_artifacts}

        out_dir = RunDir(runs["killed"]).outputs_dir(device.device_id)
        result: dict[str, object] = {}
        with RayExecutor(ExecOptions(workers=1), runs["killed"]) as ex:
            prestart_collect_actors(ex, [device])
            ex.start()
            assert ex.wait_prestarted(timeout=300) == 1

            def collect() -> None:
                try:
                    result["done"] = collect_devices(runs["killed"], [device], ex, quiet, shadows_on_devices=True,
                                                     batch_size=64)
                except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                    result["error"] = exc

            worker = threading.Thread(target=collect)
            worker.start()
            killed, done_at_kill = None, None
            deadline = time.monotonic() + 600
            while killed is None and worker.is_alive() and time.monotonic() < deadline:
                done = len(list(out_dir.glob("*.npz"))) if out_dir.is_dir() else 0
                actors = [p for p, c in _descendants(os.getpid()).items() if c.startswith(b"ray::_UnitActor.call")]
                if 1 <= done < n_artifacts and actors:
                    done_at_kill = done
                    os.kill(actors[0], signal.SIGKILL)
                    killed = actors[0]
                time.sleep(0.05)
            worker.join(timeout=900)
            assert not worker.is_alive(), "the collect did not finish after its actor was killed"
    finally:
        server.close()
    assert killed is not None, "the collect finished before its actor could be killed mid-collect"
    assert "error" not in result, result.get("error")
    assert 1 <= done_at_kill < n_artifacts
    # the retried call finished the rest: every artifact collected, and not one more
    assert sum(result["done"].values()) == n_artifacts - done_at_kill or result["done"] == reference, result
    a, b = RunDir(runs["uninterrupted"]).outputs_dir(device.device_id), out_dir
    files = sorted(p.name for p in a.glob("*.npz"))
    assert len(files) == n_artifacts and files == sorted(p.name for p in b.glob("*.npz"))
    assert not [p for p in b.iterdir() if p.suffix not in (".npz", ".json")], sorted(p.name for p in b.iterdir())
    for f in files:
        with np.load(a / f) as za, np.load(b / f) as zb:
            assert sorted(za.files) == sorted(zb.files)
            for k in za.files:
                assert np.array_equal(za[k], zb[k]), (f, k)
