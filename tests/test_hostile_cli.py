"""Hostile input at the command line (issue 11, items 3, 6 and 7): secrets, markup, membership files, re-imports.

- A password in an ``ssh://`` URI never appears in any output line, whatever it contains (``/``, ``@``, ``:``,
  ``%2F``), whether it comes from ``--device`` (collect, audit, devices probe) or from ``[[audit.devices]]``.
- Rich markup in strings from users, run files and devices (ssh user, adb serial, artifact id, experiment name,
  run path) prints literally and never crashes the CLI.
- ``compleak import`` refuses ambiguous membership ids (``6_9_9_9_9``, full-width digits, ``+5``, `` 5 ``, ``5.0``,
  ``-1``, out of range, repeated) in one line naming the file and the line; accepts a CSV with a byte-order mark and
  non-ASCII (UTF-8) dataset paths; refuses a path that is not UTF-8 in one line.
- A failed re-import leaves the run byte-identical; an unexpected exception is one line with exit 2 and its
  traceback goes to a file.

Every refusal: exit 2, one ``error:`` line, no traceback, the run and its surroundings byte-identical.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from hostile_fixtures import TreeState, assert_one_line_error, cli, cli_refuses, copy_run
from typer.testing import CliRunner

from harness.cli.main import friendly
from rundir import Manifest

MARK = "SEKRET"  # every piece of every test password carries it: it must never show up
PASSWORDS = [
    f"{MARK}a/{MARK}b",  # '/': urlsplit took it for the path and echoed the rest
    f"{MARK}c@{MARK}d",  # '@': the user part ends at the LAST '@'
    f"{MARK}e:{MARK}f",  # ':': a password holding the user/password separator
    f"{MARK}g%2F{MARK}h%40x",  # %-escapes
]
NO_SUCH_KEY = "/nonexistent/compleak-test-key"  # ssh devices fail fast on it, before any connection


def _no_secret(out: str) -> None:
    assert MARK.lower() not in out.lower(), out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict[str, Path]:
    """A digits classifier exported with plain TensorFlow, its membership (300/300), a shadow membership CSV and a
    config whose lowest FPR (0.01) 300 non-members resolve (as in tests/test_import.py)."""
    import tensorflow as tf

    from harness.data import load_dataset

    d = tmp_path_factory.mktemp("shipped")
    ds = load_dataset("digits")
    ids = np.random.default_rng(3).permutation(len(ds.y))
    members, nonmembers, rest = ids[:300], ids[300:600], ids[600:]
    tf.keras.utils.set_random_seed(3)
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds.x[members].astype("float32") / 16.0, ds.y[members], epochs=1, verbose=0)
    fp32 = d / "model_fp32.tflite"
    fp32.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    dynamic = d / "model_dynamic.tflite"
    dynamic.write_bytes(converter.convert())
    (d / "members.txt").write_text("".join(f"{i}\n" for i in members))
    (d / "nonmembers.txt").write_text("".join(f"{i}\n" for i in nonmembers))
    rows = [f"{i},1" for i in rest[:300]] + [f"{i},0" for i in rest[300:600]]
    (d / "shadow0.csv").write_text("id,member\n" + "\n".join(rows) + "\n")
    (d / "audit.toml").write_text("[attack]\nfprs = [0.01]\n")
    np.savez(d / "digits.npz", x=np.asarray(ds.x)[..., 0], y=np.asarray(ds.y))
    return {
        "fp32": fp32, "dynamic": dynamic, "members": d / "members.txt", "nonmembers": d / "nonmembers.txt",
        "shadow": d / "shadow0.csv", "config": d / "audit.toml", "npz": d / "digits.npz", "dir": d,
    }  # fmt: skip


def _import_args(run: Path, s: dict[str, Path], *, target: str | None = None, data: str = "digits",
                 members: Path | None = None) -> list[str]:
    target = target or str(s["fp32"])
    return [
        "import", str(run), "--target", target, "--data", data, "--members", str(members or s["members"]),
        "--nonmembers", str(s["nonmembers"]), "--shadow", target, "--shadow-members", str(s["shadow"]),
        "--config", str(s["config"]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def imported(shipped, tmp_path_factory) -> Path:
    """A small run made by ``compleak import`` (one target, one supplied shadow)."""
    run = tmp_path_factory.mktemp("imported") / "run"
    result = cli(_import_args(run, shipped))
    assert result.exit_code == 0, result.output
    return run


# --------------------------------------------------------------------------- item 6: secrets are never echoed


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_device_probe_uri_is_masked(password: str, tmp_path: Path) -> None:
    with TreeState(tmp_path):
        line = cli_refuses(["devices", "probe", f"ssh://pi:{password}@board.lan:22"], "password")
    _no_secret(line)
    assert "ssh://pi:***@" in line


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_audit_device_option_is_masked(password: str, tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('[experiment]\nname = "secrets"\n')
    with TreeState(tmp_path):
        result = cli(["audit", str(exp), "--device", f"ssh://pi:{password}@board.lan", "--out", str(tmp_path / "r")])
        line = assert_one_line_error(result, "password")
    _no_secret(result.output)
    assert "***" in line


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_audit_devices_config_is_masked(password: str, tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(f'[experiment]\nname = "secrets"\n\n[[audit.devices]]\nuri = "ssh://pi:{password}@board.lan:2222"\n')
    with TreeState(tmp_path):
        result = cli(["audit", str(exp), "--out", str(tmp_path / "r")])
        assert_one_line_error(result, "password", "environment variable")
    _no_secret(result.output)


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_collect_device_is_masked(password: str, imported: Path, tmp_path: Path) -> None:
    run = copy_run(imported, tmp_path / "run")
    with TreeState(run, tmp_path):
        result = cli(["collect", str(run), "--device", f"ssh://pi:{password}@192.0.2.1:22"])
        assert_one_line_error(result, "password")
    _no_secret(result.output)


def test_unparsable_uri_never_shows_the_password_part(tmp_path: Path) -> None:
    """No scheme, a newline, a bad port after a password: still one line, still masked."""
    for uri in (f"pi:{MARK}x@board", f"ssh://pi:{MARK}\n{MARK}@h:99999", f"ssh:/pi:{MARK}@h", f"ftp://a:{MARK}@b"):
        with TreeState(tmp_path):
            line = cli_refuses(["devices", "probe", uri])
        _no_secret(line)


# --------------------------------------------------------------------------- item 7: markup prints literally


def test_markup_in_ssh_user_prints_literally(imported: Path, tmp_path: Path) -> None:
    run = copy_run(imported, tmp_path / "run")
    with TreeState(run, tmp_path):
        result = cli(["collect", str(run), "--device", "ssh://[red]mallory@127.0.0.1:9", "--identity", NO_SUCH_KEY])
        line = assert_one_line_error(result, "identity file", NO_SUCH_KEY)
    assert "ssh://[red]mallory@127.0.0.1:9" in line
    assert "collecting 2 artifact(s) on ssh://[red]mallory@127.0.0.1:9" in result.output


def test_markup_closing_tag_in_device_host_is_one_line(tmp_path: Path) -> None:
    with TreeState(tmp_path):
        line = cli_refuses(["devices", "probe", "ssh://pi@[/]:22"], "ssh://pi@[/]:22")
    assert "MarkupError" not in line


def test_markup_in_device_hostname_prints_literally() -> None:
    """A device that reports the host name ``[/]x[bold]`` (a real one: this host in its own UTS namespace) shows it
    literally in the ``devices probe`` table."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    name = "[/]x[bold]"
    script = f'printf %s "{name}" > /proc/sys/kernel/hostname && exec "$0" -m harness.cli devices probe local'
    proc = subprocess.run(["unshare", "-u", "sh", "-c", script, sys.executable], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0 and "unshare" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"no UTS namespace here ({proc.stderr.strip()[:80]})")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert re.search(r"hostname\s+│\s+" + re.escape(name), out), out


def test_markup_in_adb_serial_prints_literally(imported: Path, tmp_path: Path) -> None:
    """``[`` and ``]`` are legal in an adb serial (``adb://[::1]:5555``): the serial reaches progress lines."""
    run = copy_run(imported, tmp_path / "run")
    with TreeState(run, tmp_path):
        result = cli(["collect", str(run), "--device", "adb://[bold]x[/bold]", "--binaries", str(tmp_path / "none")])
        assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
        assert result.exit_code == 2, result.output
    assert "adb://[bold]x[/bold]" in result.output


def test_markup_in_artifact_id_option_prints_literally(imported: Path, tmp_path: Path) -> None:
    run = copy_run(imported, tmp_path / "run")
    with TreeState(run, tmp_path):
        line = cli_refuses(["collect", str(run), "--artifacts", "[/]"], "[/]")
    assert "MarkupError" not in line


def test_markup_in_manifest_artifact_id_never_crashes(imported: Path, tmp_path: Path) -> None:
    run = copy_run(imported, tmp_path / "run")
    manifest = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(manifest.replace("external-target-original.tflite", "[bold]evil[/]"))
    with TreeState(run, tmp_path):
        result = cli(["collect", str(run)])
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    assert "[bold]evil[/]" in result.output, result.output
    if result.exit_code != 0:
        assert_one_line_error(result, "[bold]evil[/]")


def test_markup_in_experiment_name_never_crashes(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('[experiment]\nname = "[bold]x[/]"\n\n[[audit.devices]]\nuri = "adb://[::1]"\n')
    with TreeState(tmp_path):
        line = cli_refuses(["build", str(exp), "--out", str(tmp_path / "r")], str(exp))
    assert "[bold]x[/]" in line or "name" in line.lower()


def test_markup_in_run_path_prints_literally(shipped, tmp_path: Path) -> None:
    """The run directory's path (any folder name) shows literally in import's progress lines."""
    run = tmp_path / "[bold]runs[/]" / "r1"
    result = cli(_import_args(run, shipped))
    assert result.exit_code == 0, result.output
    assert f"into {run}" in " ".join(result.output.split()), result.output
    assert (run / "manifest.json").is_file()


# --------------------------------------------------------------------------- item 7: the last-resort handler


def _app_raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    @friendly
    def boom(uri: str = typer.Option("local", "--device")) -> None:
        raise exc

    @app.command()
    def other() -> None:  # a second command, so 'boom' is a sub-command as in compleak
        pass

    return app


def test_unexpected_exception_is_one_line_with_a_traceback_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app_raising(ZeroDivisionError("cannot divide\nsecond line")), ["boom"])
    line = assert_one_line_error(result, "internal error: ZeroDivisionError: cannot divide", "please report it")
    assert "second line" not in result.output
    where = Path(re.search(r"traceback written to (\S+);", line).group(1))
    try:
        text = where.read_text()
        assert "Traceback" in text and "ZeroDivisionError" in text
        assert where.stat().st_mode & 0o077 == 0  # private to the user
    finally:
        where.unlink()


def test_unexpected_exception_never_shows_a_typed_password(tmp_path: Path) -> None:
    secret = f"{MARK}x/{MARK}y@{MARK}z"
    uri = f"ssh://pi:{secret}@h"
    result = CliRunner().invoke(_app_raising(ValueError(f"bad {uri} and {secret}")), ["boom", "--device", uri])
    line = assert_one_line_error(result, "internal error: ValueError")
    _no_secret(result.output)
    where = Path(re.search(r"traceback written to (\S+);", line).group(1))
    try:
        _no_secret(where.read_text())
    finally:
        where.unlink()


def test_os_error_names_the_file(tmp_path: Path) -> None:
    exc = PermissionError(13, "Permission denied", str(tmp_path / "[bold]x"))
    line = assert_one_line_error(CliRunner().invoke(_app_raising(exc), ["boom"]), str(tmp_path / "[bold]x"))
    assert "Permission denied" in line


def test_usage_errors_stay_clean() -> None:
    result = cli(["collect"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Missing argument" in result.output


# --------------------------------------------------------------------------- item 7: membership files, paths


@pytest.mark.parametrize(
    "text, line_no, words",
    [
        ("5\n6_9_9_9_9\n", 2, "6_9_9_9_9"),
        ("5\n\uff16\uff19\n", 2, "\uff16\uff19"),
        ("+5\n", 1, "+5"),
        ("5\n 7 \n", 2, "' 7 '"),
        ("5.0\n", 1, "5.0"),
        ("# ids\n-1\n", 2, "-1"),
        ("5\n99999\n", 2, "outside the dataset"),
        ("5\n\n7\n5\n", 4, "first on line 1"),
        ("id,member\n5,1\n\u0667,0\n", 3, "\u0667"),  # Arabic-Indic seven in a CSV
    ],
)
def test_ambiguous_membership_ids_are_refused(shipped, tmp_path: Path, text: str, line_no: int, words: str) -> None:
    members = tmp_path / ("members.csv" if text.startswith("id,") else "members.txt")
    members.write_text(text, encoding="utf-8")
    with TreeState(tmp_path):
        cli_refuses(_import_args(tmp_path / "run", shipped, members=members), str(members), f"line {line_no}", words)
    assert not (tmp_path / "run").exists()


def test_membership_csv_with_byte_order_mark_is_accepted(shipped, tmp_path: Path) -> None:
    ids = [int(x) for x in shipped["members"].read_text().split()]
    non = [int(x) for x in shipped["nonmembers"].read_text().split()]
    csv = tmp_path / "membership.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + ("id,member\r\n" + "".join(f"{i},1\r\n" for i in ids)).encode())
    args = _import_args(tmp_path / "run", shipped, members=csv)
    result = cli(args)
    assert result.exit_code == 0, result.output
    from rundir import Splits

    s = Splits.load(tmp_path / "run" / "splits.npz")
    assert list(s.target_in) == ids and list(s.target_out) == non


def test_non_ascii_dataset_path_is_supported(shipped, tmp_path: Path) -> None:
    folder = tmp_path / "dätä ✓"
    folder.mkdir()
    shutil.copy(shipped["npz"], folder / "digits.npz")
    result = cli(_import_args(tmp_path / "rün", shipped, data=f"npz:{folder / 'digits.npz'}"))
    assert result.exit_code == 0, result.output
    from harness.config import load_experiment

    assert load_experiment(tmp_path / "rün" / "experiment.toml").data.dataset == f"npz:{folder.resolve()}/digits.npz"


def test_dataset_path_that_is_not_utf8_is_one_line(shipped, tmp_path: Path) -> None:
    import os

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/l\xe4t"))
    folder.mkdir()
    shutil.copy(shipped["npz"], folder / "digits.npz")
    with TreeState(tmp_path):
        cli_refuses(_import_args(tmp_path / "run", shipped, data=f"npz:{folder / 'digits.npz'}"), "--data", "UTF-8")


# --------------------------------------------------------------------------- item 3: a failed re-import changes nothing


def test_failed_reimport_leaves_the_run_byte_identical(imported: Path, shipped, tmp_path: Path) -> None:
    """A re-import that replaces the target with another file and then cannot write threat_model.json (a folder
    stands there): used to copy the new artifact over the old one first (sha256 mismatch afterwards)."""
    run = copy_run(imported, tmp_path / "run")
    (run / "threat_model.json").unlink()
    (run / "threat_model.json").mkdir()
    old = Manifest.load(run / "manifest.json").by_id("external-target-original.tflite").sha256
    with TreeState(run, tmp_path):
        cli_refuses(_import_args(run, shipped, target=f"{shipped['dynamic']}:original"), "threat_model.json")
    assert not list(run.glob(".import-staging-*"))
    assert Manifest.load(run / "manifest.json").by_id("external-target-original.tflite").sha256 == old


def test_reimport_replaces_an_artifact_and_stays_consistent(imported: Path, shipped, tmp_path: Path) -> None:
    from rundir import sha256_file

    run = copy_run(imported, tmp_path / "run")
    result = cli(_import_args(run, shipped, target=f"{shipped['dynamic']}:original"))
    assert result.exit_code == 0, result.output
    m = Manifest.load(run / "manifest.json")
    for rec in m.artifacts:
        assert sha256_file(run / rec.path) == rec.sha256
    assert m.by_id("external-target-original.tflite").sha256 == sha256_file(shipped["dynamic"])
    assert not list(run.glob(".import-staging-*"))
