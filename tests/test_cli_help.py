"""Help and options of the ``compleak`` CLI (issue 15): every option documented, ``--version``, help text printed
as written (no rich markup eating ``[attack]``), no ``<bool>`` metavar on flags, list options that take repeated
flags and comma-separated values alike, ``--json`` on the device commands, the stage options of ``audit``."""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from harness.cli.main import _split, app


def _commands() -> list[tuple[str, Any]]:
    """(command path, click command) for every command and group of the app, recursively."""
    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, cmd: Any) -> None:
        out.append((prefix, cmd))
        if hasattr(cmd, "list_commands"):  # a group (Typer's own click, not necessarily the click package)
            ctx = cmd.context_class(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(f"{prefix} {name}".strip(), sub)

    walk("", root)
    return out


def _help(args: list[str]) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, cmd in _commands():
        if path and not (cmd.help or cmd.short_help):
            missing.append(f"{path}: no command help")
        for p in cmd.params:
            if p.name == "help":
                continue
            if not (getattr(p, "help", None) or "").strip():
                missing.append(f"{path or 'compleak'} {p.opts[0] if p.opts else p.name}")
    assert not missing, "options without help: " + ", ".join(missing)
    assert len(_commands()) >= 15  # build, import, collect, attack, report, audit, demo, devices *, images *, ...


def test_dash_h_is_help_on_every_command() -> None:
    for path, _cmd in _commands():
        res = CliRunner().invoke(app, [*path.split(), "-h"] if path else ["-h"])
        assert res.exit_code == 0 and res.output.startswith("Usage: "), (path, res.output[-500:])


def test_version() -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"compleak {importlib.metadata.version('compleak-harness')}"


def test_help_prints_brackets_and_no_bool_metavar() -> None:
    text = _help(["attack"])
    assert "the families of the run's config's [attack] section" in " ".join(text.split())
    assert "[audit] devices" in " ".join(_help(["audit"]).split())
    for path, _ in _commands():
        rendered = _help(path.split()) if path else _help([])
        assert "<bool>" not in rendered, f"{path}: a flag shows a <bool> metavar"
    main = _help([])
    assert "Examples:" in main and "compleak demo" in main and "compleak audit" in main
    demo = " ".join(_help(["demo"]).split())
    assert ".ptl" in demo and ".onnx" in demo and ".pte" in demo and ".tflite" in demo


def test_list_options_take_repeats_and_commas() -> None:
    assert _split("NR,SR") == ["NR", "SR"]
    assert _split(["NR,SR", "MR"]) == ["NR", "SR", "MR"]
    assert _split(["NR", " SR , ", ""]) == ["NR", "SR"]
    assert _split([]) is None and _split(None) is None
    cmds = dict(_commands())
    for path, opt in [("attack", "--families"), ("attack", "--device"), ("collect", "--device"),
                      ("collect", "--artifacts"), ("audit", "--device"), ("audit", "--families")]:  # fmt: skip
        param = next(p for p in cmds[path].params if opt in p.opts)
        assert param.multiple, f"{path} {opt} is not repeatable"
        assert "comma-separate" in (param.help or ""), f"{path} {opt}: help does not say so"


def test_list_options_reach_the_stage(tiny_run, tmp_path) -> None:
    """``--device`` repeated on collect, ``--artifacts`` comma-separated, and both forms of ``--families`` end up
    in the stage: a real (small) collect and attack on a copy of the tiny run."""
    from hostile_fixtures import cli, copy_run

    from rundir import RunDir, load_results

    run = copy_run(tiny_run, tmp_path / "run")
    rd = RunDir(run)
    ids = [a.id for a in rd.load_manifest().artifacts if a.format == "onnx" and a.variant in ("original", "prune-0.8")]
    assert len(ids) == 4  # target and shadow, original and a compressed variant (SR pairs them)
    res = cli(["collect", str(run), "--device", "local", "--artifacts", f"{ids[0]},{ids[1]}", "--artifacts",
               ",".join(ids[2:])])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.stem for p in rd.outputs_dir("local").glob("*.npz")) == sorted(ids)
    res = cli(["attack", str(run), "-d", "local", "--families", "NR", "--families", "SR"])
    assert res.exit_code == 0, res.output
    assert {r.family for r in load_results(rd.results("local"))} - {"baseline"} == {"NR", "SR"}


@pytest.mark.parametrize("args", [["devices", "list", "--json"], ["devices", "probe", "local", "--json"]])
def test_device_commands_print_json(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    if args[1] == "list":
        assert isinstance(data, list) and data[0]["id"] == "local"
        assert set(data[0]) == {"id", "kind", "state", "details"}
    else:
        assert data["id"] == "local" and data["arch"] and isinstance(data["runtimes"], dict)


def test_audit_has_the_stage_options() -> None:
    cmds = dict(_commands())
    opts = {o for p in cmds["audit"].params for o in p.opts}
    assert {"--batch-size", "--force", "--container", "--families", "--engine"} <= opts
    import dataclasses
    import inspect

    from harness.audit import StageOptions, audit_run

    assert "stage" in inspect.signature(audit_run).parameters  # the stage options travel as one value
    fields = {f.name for f in dataclasses.fields(StageOptions)}
    assert {"families", "batch_size", "force", "container", "engine"} <= fields


def test_bad_family_on_audit_is_one_line(tmp_path) -> None:
    """A bad ``--families`` value fails before anything is built (no run directory appears)."""
    from hostile_fixtures import cli_refuses

    cfg = tmp_path / "exp.toml"
    cfg.write_text('[experiment]\nname = "x"\n[data]\ndataset = "digits"\n')
    cli_refuses(["audit", str(cfg), "--families", "NR,XX", "-o", str(tmp_path / "run")], "XX")
    assert not (tmp_path / "run").exists()


def test_every_example_in_the_help_parses() -> None:
    """Each ``compleak …`` line of the Examples blocks names real commands and options (``-h`` appended: click
    refuses an unknown option or command before it prints the help)."""
    import re
    import shlex

    from harness.cli.examples import EPILOG, EXAMPLES

    lines = []
    for block in [EXAMPLES, *EPILOG.values()]:
        text = block.replace("\\\n", " ")
        lines += [re.split(r"\s{2,}(?=[A-Za-z(])", ln.strip())[0] for ln in text.splitlines()
                  if ln.strip().startswith("compleak ")]
    assert len(lines) >= 20
    for line in lines:
        args = [a for a in shlex.split(line)[1:] if a not in ("|", "jq", ".[0]")]
        args = args[: args.index("|")] if "|" in args else args
        res = CliRunner().invoke(app, [*args, "-h"])
        assert res.exit_code == 0 and res.output.startswith("Usage: "), (line, res.output[-400:])
