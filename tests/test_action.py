"""The reusable GitHub composite action (.github/actions/compleak-audit/action.yml) and the Android-emulator workflow
that uses it.

GitHub's runner cannot run here (no Actions runner, no KVM, no Android images), so: the YAML is checked like a
schema (required keys, every input used and every used input declared, shells set, inputs only ever reach scripts
through ``env:``, outputs wired to steps that write them), and the action's ``run:`` steps are executed locally the
way the runner does (``bash --noprofile --norc -eo pipefail``, ``$GITHUB_OUTPUT``, ``${{ }}`` in ``env:`` resolved
from the inputs and earlier steps' outputs) against real run directories with the real ``compleak``.

The hostile-input cases (marked ``hostile``) go through the shared check (``hostile_fixtures.check``): the step's
documented exit status, one error line (GitHub's ``::error::`` annotation for the action's own checks), no
traceback, the run (or where one would be: still absent) and a sentinel folder beside it byte-identical.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_fixtures import check, copy_run, make_site

ROOT = Path(__file__).resolve().parents[1]
ACTION_DIR = ROOT / ".github" / "actions" / "compleak-audit"
ACTION = ACTION_DIR / "action.yml"
WORKFLOW = ROOT / ".github" / "workflows" / "android-emulator-audit.yml"
COMPLEAK = ROOT / ".venv" / "bin" / "compleak"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _action() -> dict[str, Any]:
    return yaml.safe_load(ACTION.read_text())


def _expressions(obj: Any) -> list[str]:
    """Every ``${{ ... }}`` expression (and bare ``if:`` condition) anywhere in ``obj``."""
    if isinstance(obj, dict):
        out = [e for k, v in obj.items() for e in _expressions(v)]
        if isinstance(obj.get("if"), str) and "${{" not in obj["if"]:
            out.append(obj["if"])
        return out
    if isinstance(obj, list):
        return [e for v in obj for e in _expressions(v)]
    return EXPR.findall(obj) if isinstance(obj, str) else []


# --------------------------------------------------------------------------- structure


def test_action_yaml_structure() -> None:
    action = _action()
    assert {"name", "description", "inputs", "outputs", "runs"} <= set(action)
    assert action["runs"]["using"] == "composite"
    inputs, steps = action["inputs"], action["runs"]["steps"]
    assert inputs["config"]["required"] is True
    for name, spec in inputs.items():
        assert spec.get("description"), name
        assert spec.get("required", False) or "default" in spec, f"optional input {name} needs a default"
    expressions = _expressions(steps)
    used = {m.group(1) for e in expressions for m in re.finditer(r"\binputs\.([A-Za-z0-9_-]+)", e)}
    assert used == set(inputs), f"declared but unused: {set(inputs) - used}; used but undeclared: {used - set(inputs)}"
    ids = [s["id"] for s in steps if "id" in s]
    assert len(ids) == len(set(ids))
    for e in expressions:  # only inputs, earlier steps' outputs, the action's path and always()
        assert re.fullmatch(r"inputs\.[\w-]+( == '')?|steps\.[\w-]+\.outputs\.[\w-]+|github\.action_path|always\(\)",
                            e), e  # fmt: skip
    for i, s in enumerate(steps):
        assert s.get("name"), s
        if "run" in s:
            assert s.get("shell") == "bash", s["name"]
            assert "${{" not in s["run"], f"{s['name']}: inputs reach scripts through env:, never pasted in"
        else:
            assert re.fullmatch(r"actions/(setup-python|upload-artifact)@v\d+", s["uses"]), s["uses"]
        for e in _expressions(s):
            m = re.match(r"steps\.([\w-]+)\.outputs\.([\w-]+)", e)
            if m:  # an output of an EARLIER step, which that step's script writes
                src = next(p for p in steps[:i] if p.get("id") == m.group(1))
                assert f"gh_put {m.group(2)} " in src["run"], e
    for name, spec in action["outputs"].items():
        assert spec.get("description"), name
        sid, out = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.([\w-]+) \}\}", spec["value"]).groups()
        assert f"gh_put {out} " in next(s for s in steps if s.get("id") == sid)["run"], name
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and "${{ inputs.run-dir }}/report/" in upload["with"]["path"]
    assert upload["with"]["name"] == "${{ inputs.artifact-name }}"
    assert steps[-1]["id"] == "status"  # the exit status comes last, after the upload


def test_android_workflow_uses_the_action() -> None:
    """The workflow cannot run here (no KVM, no Android images): it is valid YAML, creates the AVD, and audits on it
    through the reusable action with declared inputs only."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "workflow_dispatch" in on and "fail-on" in on["workflow_dispatch"]["inputs"]
    job = wf["jobs"]["audit"]
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    names = [s.get("uses", "") for s in steps]
    assert names[0].startswith("actions/checkout@")  # a local action needs the checkout
    assert any("kvm" in s.get("run", "").lower() for s in steps)
    emu_i = next(i for i, u in enumerate(names) if u.startswith("reactivecircus/android-emulator-runner@"))
    emu = steps[emu_i]["with"]
    assert emu["arch"] == "x86_64" and emu["avd-name"] == "${{ env.AVD }}" and wf["env"]["AVD"]
    config_i = next(i for i, s in enumerate(steps) if "[[audit.devices]]" in s.get("run", ""))
    assert 'uri = "emulator://%s"' in steps[config_i]["run"] and '"$AVD"' in steps[config_i]["run"]
    assert "binaries" not in steps[config_i]["run"]  # the emulator takes the native bundle by default
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "benchmark_model" not in runs and "docker build" not in runs  # no NDK / Android tool build
    bundle_i = next(i for i, s in enumerate(steps) if "runners build --arch amd64" in s.get("run", ""))
    install_i = next(i for i, s in enumerate(steps) if "bash scripts/setup.sh" in s.get("run", ""))
    act_i = names.index("./.github/actions/compleak-audit")
    assert install_i < bundle_i < act_i and act_i > max(emu_i, config_i)
    assert steps[act_i]["with"]["compleak"] == "${{ env.COMPLEAK }}"  # the compleak that built the bundle
    given = steps[act_i]["with"]
    inputs = _action()["inputs"]
    assert set(given) <= set(inputs)
    assert {k for k, v in inputs.items() if v.get("required")} <= set(given)
    assert given["config"] == "ci-audit.toml" and given["fail-on"] == "${{ env.FAIL_ON }}"
    assert not any(u.startswith("actions/upload-artifact@") for u in names)  # the action uploads the report


# --------------------------------------------------------------------------- the steps, run locally


def github_outputs(text: str) -> dict[str, str]:
    """``$GITHUB_OUTPUT`` read as the runner reads it: ``NAME=VALUE`` lines and ``NAME<<DELIM`` ... ``DELIM``
    blocks."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            end = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1:end])
            i = end + 1
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        i += 1
    return out


class Runner:
    """Runs the action's ``run:`` steps as GitHub's runner does, in a workspace folder."""

    def __init__(self, workspace: Path, inputs: dict[str, str]) -> None:
        action = _action()
        self.steps = action["runs"]["steps"]
        self.inputs = {k: str(v.get("default", "")) for k, v in action["inputs"].items()} | inputs
        self.workspace = workspace
        self.outputs: dict[str, dict[str, str]] = {}
        self.logs: dict[str, str] = {}
        self.rc: dict[str, int] = {}

    def _resolve(self, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            e = m.group(1)
            if e.startswith("inputs."):
                return self.inputs[e.removeprefix("inputs.")]
            if e == "github.action_path":
                return str(ACTION_DIR)
            sid, name = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", e).groups()  # type: ignore[union-attr]
            return self.outputs.get(sid, {}).get(name, "")

        return EXPR.sub(sub, str(value))

    def run(self, ids: list[str]) -> None:
        for step in self.steps:
            if step.get("id") not in ids:
                continue
            sid = step["id"]
            out = self.workspace / f".github-output-{sid}"
            out.write_text("")
            env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "GITHUB_OUTPUT": str(out),
                   "RUNNER_TEMP": str(self.workspace / ".runner-temp"), "COLUMNS": "160",
                   "GITHUB_STEP_SUMMARY": str(self.workspace / ".github-step-summary.md")}  # fmt: skip
            env |= {k: self._resolve(v) for k, v in step.get("env", {}).items()}
            proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                  cwd=self.workspace, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
            self.rc[sid] = proc.returncode
            self.logs[sid] = proc.stdout + proc.stderr
            self.outputs[sid] = github_outputs(out.read_text())

    def step(self, sid: str) -> subprocess.CompletedProcess[str]:
        """Run one step; its status and log as a finished process (what ``hostile_fixtures.check`` judges)."""
        self.run([sid])
        return subprocess.CompletedProcess([sid], self.rc[sid], self.logs[sid], "")


def test_install_step_takes_a_given_compleak_or_refuses_it(tmp_path: Path) -> None:
    r = Runner(tmp_path, {"config": "x.toml", "compleak": str(COMPLEAK)})
    r.run(["install"])
    assert r.rc["install"] == 0, r.logs["install"]
    assert r.outputs["install"] == {"compleak": str(COMPLEAK)}
    r = Runner(tmp_path, {"config": "x.toml", "compleak": str(tmp_path / "nope")})
    r.run(["install"])
    assert r.rc["install"] == 2 and "::error::compleak input compleak:" in r.logs["install"]


def _gate_run(tmp_path: Path, run: Path, **inputs: str) -> Runner:
    """install (the given compleak) -> gate -> status on a finished run, as if the audit step had succeeded."""
    r = Runner(tmp_path, {"config": "x.toml", "compleak": str(COMPLEAK), "run-dir": str(run), **inputs})
    r.run(["install"])
    r.outputs["audit"] = {"exit-code": "0", "run-dir": str(run), "report": f"{run}/report/index.html"}
    r.run(["gate", "status"])
    return r


def test_gate_step_trips_and_the_action_exits_3(attacked_run: Path, tmp_path: Path) -> None:
    run = copy_run(attacked_run, tmp_path / "run")
    r = _gate_run(tmp_path, run, **{"fail-on": "\n  auc_lo>0.55  \nMR:auc_lo>0.9999\n\n"})
    assert r.rc["gate"] == 0, r.logs["gate"]
    assert r.outputs["gate"] == {"exit-code": "3", "gate": "failed"}
    assert "gate failed:" in r.logs["gate"] and "over 1 of 2 rules" in r.logs["gate"]
    assert "::error::compleak: a --fail-on rule tripped" in r.logs["gate"]
    assert "::error title=compleak gate%3A auc_lo>0.55::" in r.logs["gate"]  # annotations on the run
    summary = (r.workspace / ".github-step-summary.md").read_text()
    assert summary.startswith("**compleak gate failed** (exit status 3)") and "| auc_lo&gt;0.55 | " in summary
    assert (run / "report" / "results.csv").is_file()  # exported next to the report for the upload
    assert r.rc["status"] == 3 and r.outputs["status"] == {"exit-code": "3", "gate": "failed"}
    soft = _gate_run(tmp_path, run, **{"fail-on": "auc_lo>0.55", "fail-job": "false"})
    assert soft.rc["status"] == 0 and soft.outputs["status"]["exit-code"] == "3"


@pytest.mark.parametrize(
    ("fail_on", "gate", "rc"),
    [("auc>0.999\nNR:eps>50", "passed", 0), ("", "none", 0),
     pytest.param("auc>>1", "error", 2, marks=pytest.mark.hostile),
     pytest.param("device=adb://x:auc>0", "error", 2, marks=pytest.mark.hostile)],
)
def test_gate_step_outcomes(attacked_run: Path, tmp_path: Path, fail_on: str, gate: str, rc: int) -> None:
    if rc != 2:
        r = _gate_run(tmp_path, attacked_run, **{"fail-on": fail_on, "fail-job": "true"})
        (attacked_run / "report" / "results.csv").unlink(missing_ok=True)  # the shared run stays as it was
    else:  # a hostile rule: compleak's one error line in the gate step, the run unchanged but for the export
        site = make_site(copy_run(attacked_run, tmp_path / "run"))
        r = Runner(tmp_path, {"config": "x.toml", "compleak": str(COMPLEAK), "run-dir": str(site.run),
                              "fail-on": fail_on, "fail-job": "true"})  # fmt: skip
        r.run(["install"])
        r.outputs["audit"] = {"exit-code": "0", "run-dir": str(site.run), "report": f"{site.run}/report/index.html"}
        check(lambda: r.step("gate"), "error: --fail-on", site=site, status=0, writes=("report",),
              why="the gate step records compleak's status (2) as an output and exits 0; it exports the table "
                  "to report/")
        r.run(["status"])
    assert r.outputs["status"] == {"exit-code": str(rc), "gate": gate}, r.logs
    assert r.rc["status"] == rc


def test_audit_step_passes_devices_and_arguments_and_a_failure_skips_the_gate(tmp_path: Path) -> None:
    # extra-args reach `compleak audit` as separate words (an unknown one is refused by the CLI itself)
    r = Runner(tmp_path, {"config": "missing.toml", "compleak": str(COMPLEAK), "extra-args": "--no-ray  --bogus"})
    r.run(["install", "audit"])
    assert r.rc["audit"] == 0 and r.outputs["audit"]["exit-code"] == "2"
    assert "No such option: --bogus" in r.logs["audit"]
    # a bad config: the audit fails (exit 2), the gate is not run, the action exits 2
    (tmp_path / "bad.toml").write_text("[experiment\n")
    r = Runner(tmp_path, {"config": "bad.toml", "compleak": str(COMPLEAK), "devices": "adb://emulator-5554\n local",
                          "extra-args": "--no-ray", "fail-on": "auc>0.6", "run-dir": "runs/ci"})  # fmt: skip
    r.run(["install", "audit", "gate", "status"])
    assert r.outputs["audit"] == {"exit-code": "2", "run-dir": "runs/ci", "report": "runs/ci/report/index.html"}
    assert "bad.toml" in r.logs["audit"] and "::error::compleak audit failed (exit status 2)" in r.logs["audit"]
    assert r.outputs["gate"] == {"gate": "error"} and "gate" not in r.logs["gate"].replace("gate=", "")
    assert r.rc["status"] == 2 and r.outputs["status"] == {"exit-code": "2", "gate": "error"}
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_action_audits_the_tiny_config_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    """Every run step for real on the tiny config (build resumed from the shared tiny run): audit, gate, export."""
    from test_report import FAST_ATTACKS

    run = copy_run(tiny_run, tmp_path / "run")
    config = tmp_path / "tiny.toml"  # the tiny config with fast attack settings (the build keys do not change)
    config.write_text((ROOT / "tests" / "data" / "tiny.toml").read_text() + FAST_ATTACKS)
    r = Runner(tmp_path, {"config": str(config), "compleak": str(COMPLEAK),
                          "run-dir": str(run), "extra-args": "--no-ray", "fail-on": "auc>0"})  # fmt: skip
    r.run(["install", "audit", "gate", "status"])
    assert r.outputs["audit"]["exit-code"] == "0", r.logs["audit"]
    assert (run / "report" / "index.html").is_file() and (run / "report" / "results.csv").is_file()
    assert r.outputs["status"] == {"exit-code": "3", "gate": "failed"} and r.rc["status"] == 3


@pytest.mark.parametrize(
    ("inputs", "name"),
    [({"run-dir": "runs/x\nexit-code=0"}, "run-dir"), ({"config": "a.toml\n::stop-commands::x"}, "config"),
     ({"artifact-name": "../up"}, "artifact-name"), ({"fail-job": "maybe"}, "fail-job"),
     ({"python-version": "3.11; rm -rf /"}, "python-version"), ({"extras": "tf]; x"}, "extras")],
)
@pytest.mark.hostile
def test_hostile_inputs_are_refused_before_anything_runs(tmp_path: Path, inputs: dict[str, str], name: str) -> None:
    r = Runner(tmp_path, {"config": "x.toml", "compleak": str(COMPLEAK), **inputs})
    res = check(lambda: r.step("check"), f"compleak input {name}:", site=make_site(tmp_path / "runs"),
                prefix="::error::")
    assert r.outputs["check"] == {}, r.logs["check"]
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"::error::compleak input {name}:"), lines


@pytest.mark.hostile
def test_a_newline_in_a_value_cannot_add_an_output(tmp_path: Path) -> None:
    """Even a value that reached an output (the audit step records run-dir) stays one output."""
    r = Runner(tmp_path, {"config": "missing.toml", "compleak": str(COMPLEAK), "run-dir": "runs/a\nexit-code=0",
                          "extra-args": "--no-ray"})  # fmt: skip
    r.run(["install"])
    check(lambda: r.step("audit"), "compleak audit failed (exit status 2)", site=make_site(tmp_path / "runs"),
          status=0, prefix="::error::",
          why="the audit step records compleak's status (2) as an output and exits 0 (the status step fails the job)")
    assert r.outputs["audit"]["run-dir"] == "runs/a\nexit-code=0"
    assert r.outputs["audit"]["exit-code"] == "2"
    r.outputs["gate"] = {}
    r.run(["status"])
    assert r.outputs["status"] == {"exit-code": "2", "gate": "error"}


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_inputs_reach_scripts_only_through_the_environment(path: Path) -> None:
    wf = yaml.safe_load(path.read_text())
    for job in wf["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            assert "github.event.inputs" not in script and "${{ inputs." not in script, (path.name, step["name"])
            # a heredoc that expands variables must not paste them into code another tool runs (Gradle, Python)
            for m in re.finditer(r"<<(['\"]?)(\w+)\1\n(.*?)\n\s*\2\b", script, re.S):
                assert m.group(1) or "${" not in m.group(3) and "$" not in m.group(3), (path.name, step["name"])


@pytest.mark.parametrize(
    ("path", "env", "expect"),
    [("native-runner-android.yml", {"LITERT_VERSION": '2.1.0@aar"\n}\nprintln "x'}, "litert-version"),
     ("android-emulator-audit.yml", {"API_LEVEL": "34; id", "EXPERIMENT": "experiments/fashion-default.toml"},
      "api-level"),
     ("android-emulator-audit.yml", {"API_LEVEL": "34", "EXPERIMENT": "../../etc/passwd"}, "experiment")],
)
@pytest.mark.hostile
def test_workflow_input_checks_refuse_hostile_values(path: str, env: dict[str, str], expect: str,
                                                     tmp_path: Path) -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / path).read_text())
    step = next(s for j in wf["jobs"].values() for s in j["steps"] if s["name"].startswith("Check the inputs"))
    res = check(lambda: subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                       check=False, cwd=ROOT, env={"PATH": os.environ["PATH"], **env},
                                       capture_output=True, text=True),
                site=make_site(tmp_path / "run"), prefix="::error::")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"::error::{expect}"), lines
