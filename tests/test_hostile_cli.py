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

Every case goes through the shared check (``hostile_fixtures.check``): exit 2, one ``error:`` line, no traceback,
the run and a sentinel folder beside it byte-identical. Cases whose point is that a command succeeds safely say so
(``status=0, errors=0``, what they may write, and why).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from hostile_fixtures import Site, check, cli, copy_run, make_site

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


@pytest.fixture
def bare(tmp_path: Path) -> Site:
    """No run yet: ``tmp/run`` must stay absent, a sentinel ``tmp/victim`` untouched, ``tmp`` itself unchanged."""
    return make_site(tmp_path / "run", also=[tmp_path])


def _site(run: Path, tmp_path: Path) -> Site:
    return make_site(run, tmp_path / "victim", also=[tmp_path])


# --------------------------------------------------------------------------- item 6: secrets are never echoed


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_device_probe_uri_is_masked(password: str, bare: Site) -> None:
    line = check(["devices", "probe", f"ssh://pi:{password}@board.lan:22"], "password", site=bare).line
    _no_secret(line)
    assert "ssh://pi:***@" in line


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_audit_device_option_is_masked(password: str, tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('[experiment]\nname = "secrets"\n')
    site = _site(tmp_path / "r", tmp_path)
    res = check(["audit", str(exp), "--device", f"ssh://pi:{password}@board.lan", "--out", str(site.run)],
                "password", site=site)
    _no_secret(res.output)
    assert "***" in res.line


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_audit_devices_config_is_masked(password: str, tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(f'[experiment]\nname = "secrets"\n\n[[audit.devices]]\nuri = "ssh://pi:{password}@board.lan:2222"\n')
    site = _site(tmp_path / "r", tmp_path)
    res = check(["audit", str(exp), "--out", str(site.run)], "password", "environment variable", site=site)
    _no_secret(res.output)


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_in_collect_device_is_masked(password: str, imported: Path, tmp_path: Path) -> None:
    site = _site(copy_run(imported, tmp_path / "run"), tmp_path)
    res = check(["collect", str(site.run), "--device", f"ssh://pi:{password}@192.0.2.1:22"], "password", site=site)
    _no_secret(res.output)


@pytest.mark.parametrize("uri", [f"pi:{MARK}x@board", f"ssh://pi:{MARK}\n{MARK}@h:99999", f"ssh:/pi:{MARK}@h",
                                 f"ftp://a:{MARK}@b"], ids=["no-scheme", "newline-bad-port", "one-slash", "ftp"])
def test_unparsable_uri_never_shows_the_password_part(uri: str, bare: Site) -> None:
    """No scheme, a newline, a bad port after a password: still one line, still masked."""
    res = check(["devices", "probe", uri], site=bare)
    _no_secret(res.output)


# --------------------------------------------------------------------------- item 7: markup prints literally


def test_markup_in_ssh_user_prints_literally(imported: Path, tmp_path: Path) -> None:
    site = _site(copy_run(imported, tmp_path / "run"), tmp_path)
    res = check(["collect", str(site.run), "--device", "ssh://[red]mallory@127.0.0.1:9", "--identity", NO_SUCH_KEY],
                "identity file", NO_SUCH_KEY, site=site)
    assert "ssh://[red]mallory@127.0.0.1:9" in res.line
    assert "collecting 2 artifact(s) on ssh://[red]mallory@127.0.0.1:9" in res.output


def test_markup_closing_tag_in_device_host_is_one_line(bare: Site) -> None:
    line = check(["devices", "probe", "ssh://pi@[/]:22"], "ssh://pi@[/]:22", site=bare).line
    assert "MarkupError" not in line


def test_markup_in_device_hostname_prints_literally(bare: Site) -> None:
    """A device that reports the host name ``[/]x[bold]`` (a real one: this host in its own UTS namespace) shows it
    literally in the ``devices probe`` table. Needs ``unshare`` (util-linux) and a new UTS namespace (root, as CI)."""
    if shutil.which("unshare") is None:
        pytest.skip("the unshare command is missing: install util-linux (apt install util-linux)")
    probe = subprocess.run(["unshare", "-u", "true"], check=False, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"unshare -u failed ({probe.stderr.strip()[:100]}): a new UTS namespace needs root "
                    "(CAP_SYS_ADMIN) or unprivileged user namespaces; run the suite as root (as CI does)")
    name = "[/]x[bold]"
    script = f'printf %s "{name}" > /proc/sys/kernel/hostname && exec "$0" -m harness.cli devices probe local'
    res = check(lambda: subprocess.run(["unshare", "-u", "sh", "-c", script, sys.executable], check=False,
                                       capture_output=True, text=True, timeout=300,
                                       cwd=Path(__file__).resolve().parents[1]),
                site=bare, status=0, errors=0, why="a host name is data, not a refusal: the probe shows it")
    assert re.search(r"hostname\s+│\s+" + re.escape(name), res.output), res.output


def test_markup_in_adb_serial_prints_literally(imported: Path, tmp_path: Path) -> None:
    """``[`` and ``]`` are legal in an adb serial (``adb://[::1]:5555``): the serial reaches progress lines."""
    site = _site(copy_run(imported, tmp_path / "run"), tmp_path)
    res = check(["collect", str(site.run), "--device", "adb://[bold]x[/bold]", "--binaries", str(tmp_path / "none")],
                site=site)
    assert "MarkupError" not in res.output and "adb://[bold]x[/bold]" in res.output


def test_markup_in_artifact_id_option_prints_literally(imported: Path, tmp_path: Path) -> None:
    site = _site(copy_run(imported, tmp_path / "run"), tmp_path)
    line = check(["collect", str(site.run), "--artifacts", "[/]"], "[/]", site=site).line
    assert "MarkupError" not in line


def test_markup_in_manifest_artifact_id_never_crashes(imported: Path, tmp_path: Path) -> None:
    run = copy_run(imported, tmp_path / "run")
    manifest = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(manifest.replace("external-target-original.tflite", "[bold]evil[/]"))
    res = check(["collect", str(run)], "[bold]evil[/]", site=_site(run, tmp_path))
    assert "MarkupError" not in res.output


def test_markup_in_experiment_name_never_crashes(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('[experiment]\nname = "[bold]x[/]"\n\n[[audit.devices]]\nuri = "adb://[::1]"\n')
    line = check(["build", str(exp), "--out", str(tmp_path / "r")], str(exp), site=_site(tmp_path / "r", tmp_path)).line
    assert "[bold]x[/]" in line or "name" in line.lower()


def test_markup_in_run_path_prints_literally(shipped, tmp_path: Path) -> None:
    """The run directory's path (any folder name) shows literally in import's progress lines."""
    run = tmp_path / "[bold]runs[/]" / "r1"
    res = check(_import_args(run, shipped), site=make_site(run, tmp_path / "victim"), status=0, errors=0,
                writes=("*",), why="a folder name is data, not a refusal: import makes the run there")
    assert f"into {run}" in " ".join(res.output.split()), res.output
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


def test_unexpected_exception_is_one_line_with_a_traceback_file(bare: Site) -> None:
    line = check(["boom"], "internal error: ZeroDivisionError: cannot divide", "please report it", site=bare,
                 app=_app_raising(ZeroDivisionError("cannot divide\nsecond line"))).line
    assert "second line" not in line
    where = Path(re.search(r"traceback written to (\S+);", line).group(1))
    try:
        text = where.read_text()
        assert "Traceback" in text and "ZeroDivisionError" in text
        assert where.stat().st_mode & 0o077 == 0  # private to the user
    finally:
        where.unlink()


def test_unexpected_exception_never_shows_a_typed_password(bare: Site) -> None:
    secret = f"{MARK}x/{MARK}y@{MARK}z"
    uri = f"ssh://pi:{secret}@h"
    res = check(["boom", "--device", uri], "internal error: ValueError", site=bare,
                app=_app_raising(ValueError(f"bad {uri} and {secret}")))
    _no_secret(res.output)
    where = Path(re.search(r"traceback written to (\S+);", res.line).group(1))
    try:
        _no_secret(where.read_text())
    finally:
        where.unlink()


def test_os_error_names_the_file(bare: Site, tmp_path: Path) -> None:
    exc = PermissionError(13, "Permission denied", str(tmp_path / "[bold]x"))
    line = check(["boom"], str(tmp_path / "[bold]x"), site=bare, app=_app_raising(exc)).line
    assert "Permission denied" in line


def test_usage_errors_stay_clean(bare: Site) -> None:
    check(["collect"], "Missing argument", site=bare, errors=0,
          why="a usage error is the CLI framework's own 'Usage:' block (exit 2), not the tool's 'error:' line")


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
def test_ambiguous_membership_ids_are_refused(shipped, bare: Site, tmp_path: Path, text: str, line_no: int,
                                              words: str) -> None:
    members = tmp_path / ("members.csv" if text.startswith("id,") else "members.txt")
    members.write_text(text, encoding="utf-8")
    check(_import_args(bare.run, shipped, members=members), str(members), f"line {line_no}", words, site=bare)


def test_membership_csv_with_byte_order_mark_is_accepted(shipped, bare: Site, tmp_path: Path) -> None:
    ids = [int(x) for x in shipped["members"].read_text().split()]
    non = [int(x) for x in shipped["nonmembers"].read_text().split()]
    csv = tmp_path / "membership.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + ("id,member\r\n" + "".join(f"{i},1\r\n" for i in ids)).encode())
    check(_import_args(bare.run, shipped, members=csv), site=bare, status=0, errors=0, writes=("*",),
          why="a byte-order mark is a valid CSV: import makes the run (nothing else in its folder changes)")
    from rundir import Splits

    s = Splits.load(bare.run / "splits.npz")
    assert list(s.target_in) == ids and list(s.target_out) == non


def test_non_ascii_dataset_path_is_supported(shipped, tmp_path: Path) -> None:
    folder = tmp_path / "dätä ✓"
    folder.mkdir()
    shutil.copy(shipped["npz"], folder / "digits.npz")
    site = make_site(tmp_path / "rün", tmp_path / "victim", also=[folder])
    check(_import_args(site.run, shipped, data=f"npz:{folder / 'digits.npz'}"), site=site, status=0, errors=0,
          writes=("*",), why="a non-ASCII (UTF-8) path is a valid path: import makes the run")
    from harness.config import load_experiment

    assert load_experiment(site.run / "experiment.toml").data.dataset == f"npz:{folder.resolve()}/digits.npz"


def test_dataset_path_that_is_not_utf8_is_one_line(shipped, bare: Site, tmp_path: Path) -> None:
    import os

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/l\xe4t"))
    folder.mkdir()
    shutil.copy(shipped["npz"], folder / "digits.npz")
    check(_import_args(bare.run, shipped, data=f"npz:{folder / 'digits.npz'}"), "--data", "UTF-8", site=bare)


# --------------------------------------------------------------------------- item 3: a failed re-import changes nothing


def test_failed_reimport_leaves_the_run_byte_identical(imported: Path, shipped, tmp_path: Path) -> None:
    """A re-import that replaces the target with another file and then cannot write threat_model.json (a folder
    stands there): used to copy the new artifact over the old one first (sha256 mismatch afterwards)."""
    run = copy_run(imported, tmp_path / "run")
    (run / "threat_model.json").unlink()
    (run / "threat_model.json").mkdir()
    old = Manifest.load(run / "manifest.json").by_id("external-target-original.tflite").sha256
    check(_import_args(run, shipped, target=f"{shipped['dynamic']}:original"), "threat_model.json",
          site=_site(run, tmp_path))
    assert not list(run.glob(".import-staging-*"))
    assert Manifest.load(run / "manifest.json").by_id("external-target-original.tflite").sha256 == old


def test_reimport_replaces_an_artifact_and_stays_consistent(imported: Path, shipped, tmp_path: Path) -> None:
    from rundir import sha256_file

    run = copy_run(imported, tmp_path / "run")
    check(_import_args(run, shipped, target=f"{shipped['dynamic']}:original"), site=make_site(run), status=0,
          errors=0, writes=("*",), why="the control: a re-import that can finish replaces the target on purpose "
                                      "(the run's consistency is asserted below)")
    m = Manifest.load(run / "manifest.json")
    for rec in m.artifacts:
        assert sha256_file(run / rec.path) == rec.sha256
    assert m.by_id("external-target-original.tflite").sha256 == sha256_file(shipped["dynamic"])
    assert not list(run.glob(".import-staging-*"))


# --------------------------------------------------------------------------- the shared check checks


@pytest.mark.hostile_exempt("a self-test of hostile_fixtures.check: each of its five checks must fail when broken")
def test_the_shared_check_fails_when_any_of_its_checks_fails(tmp_path: Path) -> None:
    from rundir import ContractError

    site = make_site(tmp_path / "run", also=[tmp_path / "other"])
    site.run.mkdir()
    (site.run / "f").write_text("x")
    (tmp_path / "other").mkdir()

    def refuse(effect=lambda: None, msg="bad thing"):
        def stage() -> None:
            effect()
            raise ContractError(msg)

        return stage

    check(refuse(), "bad thing", site=site)  # the baseline passes
    bad = ("bad thing",)
    broken = [  # (what breaks, action, expect, site, extra arguments): each must fail the check
        ("status", lambda: None, bad, site, {}),
        ("expect", refuse(), ("another thing",), site, {}),
        ("two lines", refuse(lambda: print("error: one more")), bad, site, {}),
        ("internal", lambda: 1 / 0, (), site, {}),
        ("traceback", refuse(lambda: print("Traceback (most recent call last):")), bad, site, {}),
        ("run", refuse(lambda: (site.run / "f").write_text("y")), bad, site, {}),
        ("run mode", refuse(lambda: os.chmod(site.run, 0o700)), bad, site, {}),
        ("run made", refuse(lambda: (tmp_path / "never").mkdir()), bad, make_site(tmp_path / "never"), {}),
        ("sentinel", refuse(lambda: (site.sentinel / "nested" / "data.bin").unlink()), bad, site, {}),
        ("sentinel mode", refuse(lambda: os.chmod(site.sentinel, 0o755)), bad, site, {}),
        ("also", refuse(lambda: (tmp_path / "other" / "new").write_text("")), bad, site, {}),
        ("writes outside", refuse(lambda: (site.run / "g").write_text("")), bad, site,
         {"writes": ("report",), "why": "only report/"}),
    ]
    if os.geteuid() == 0:  # only root can give a file away
        broken.append(("sentinel owner", refuse(lambda: os.chown(site.sentinel / "important.txt", 4242, -1)), bad,
                       site, {}))
    for what, action, expect, where, extra in broken:
        try:
            check(action, *expect, site=where, **extra)
        except AssertionError as exc:
            for left in set(re.findall(r"traceback written to (\S+);", str(exc))):  # the internal error's file
                Path(left).unlink(missing_ok=True)
        else:
            pytest.fail(f"the shared check passed although {what} was broken")
        make_site(site.run, site.sentinel)  # replant what a case broke
    with pytest.raises(AssertionError, match="say why"):
        check(refuse(), site=site, status=3)
    check(refuse(lambda: (site.run / "report").mkdir()), "bad thing", site=site, writes=("report",), why="allowed")
