"""A quiet terminal (issue 15): third-party log noise goes to RUN/logs/<command>.log, ``-v`` shows it.

The end-to-end cases run the real ``compleak`` console script in a subprocess on a small real build (TensorFlow's
absl lines, the TF-Lite converter, torchao's library-load failures, ExecuTorch's cpuinfo lines), so they fail when
any of that reaches the terminal again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from build_fixtures import digits_toml
from rich.console import Console

from harness.cli.quiet import quiet, run_log_path

COMPLEAK = Path(sys.executable).parent / "compleak"

#: third-party noise as it looks on a terminal: absl/glog prefixes (I0000 00:00:..., W1130 00:57:...), Python
#: warnings, the cpuinfo lines of ExecuTorch, Python logging's default format (WARNING:torchao:...)
NOISE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d|Warning:|\bwarnings?\.warn|cpuinfo|absl|^(WARNING|INFO|ERROR):[\w.]*:|XNNPACK",
    re.IGNORECASE | re.MULTILINE,
)

MICRO = digits_toml("micro", seed=3, n=100, epochs=1, tf=("original",), torch=("original",), formats=("pte",))


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "160"}
    env.pop("COMPLEAK_VERBOSE", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([str(COMPLEAK), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)


def _noise(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if NOISE.search(ln)]


@pytest.fixture(scope="module")
def micro_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quiet") / "micro.toml"
    path.write_text(MICRO)
    return path


def test_build_is_quiet_and_logs_the_noise(micro_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = _run(["build", str(micro_config), "-o", str(run), "--no-ray"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "built tf-target-original.tflite" in out and "built torch-target-original.pte" in out
    assert not _noise(out), _noise(out)
    log = run_log_path(run, "build")
    assert log.is_file(), sorted(p.name for p in run.iterdir())
    assert _noise(log.read_text(errors="replace")), "the library noise is kept in RUN/logs/build.log"
    assert not list((tmp_path / "cache" / "compleak" / "logs").glob("*.log")), "moved out of the cache folder"

    # -v: the libraries print on the terminal again (a TF-only build of the same size: TensorFlow's absl lines)
    tf_only = tmp_path / "tf-only.toml"
    tf_only.write_text(micro_config.read_text().replace('frameworks = ["tf", "torch"]', 'frameworks = ["tf"]'))
    res = _run(["-v", "build", str(tf_only), "-o", str(tmp_path / "run-v"), "--no-ray"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _noise(res.stdout + res.stderr), "-v shows the libraries' output"


def test_errors_still_reach_the_terminal(tmp_path: Path) -> None:
    res = _run(["attack", str(tmp_path / "missing-run")], tmp_path)
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "missing-run" in errors[0], res.stderr
    assert not (tmp_path / "missing-run").exists()


def test_quiet_redirects_fd2_and_keeps_the_error_console(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fd-level noise (a C library, a child process), Python warnings and sys.stderr go to the log; a console given
    as ``consoles`` still prints on the real stderr; a failed block leaves its log in the cache, not in the run."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if True:  # (one block: the cache folder is the test's own)
        err = Console(stderr=True, force_terminal=False)
        run = tmp_path / "run"
        run.mkdir()
        with quiet("collect", run, consoles=[err]) as q:
            os.write(2, b"I0000 00:00:1 cudart_stub.cc:31] noise from C\n")
            subprocess.run(["sh", "-c", "echo 'child noise' >&2"], check=True)
            warnings.warn("FutureWarning from a library", FutureWarning, stacklevel=1)
            print("python stderr noise", file=sys.stderr)
            err.print("error: still on the terminal")
        captured = capfd.readouterr()
        assert "error: still on the terminal" in captured.err
        assert "noise" not in captured.err + captured.out, captured
        assert q.kept == run_log_path(run, "collect")
        text = q.kept.read_text()
        for want in ("noise from C", "child noise", "FutureWarning from a library", "python stderr noise"):
            assert want in text, text

        with pytest.raises(RuntimeError), quiet("attack", run, consoles=[err]) as failed:
            os.write(2, b"W0000 noise before a failure\n")
            raise RuntimeError("boom")
        assert not run_log_path(run, "attack").exists(), "a failed command writes nothing into the run"
        assert failed.kept is not None and failed.kept.parent == tmp_path / "cache" / "compleak" / "logs"
        assert "noise before a failure" in failed.kept.read_text()

        outside = tmp_path / "outside"
        outside.mkdir()
        planted = tmp_path / "planted-run"
        planted.mkdir()
        (planted / "logs").symlink_to(outside)  # a hostile run: RUN/logs links out of the run
        with quiet("build", planted) as q2:
            os.write(2, b"noise into a planted link\n")
        assert not list(outside.iterdir()), "nothing written through the link"
        assert q2.kept is not None and q2.kept.parent == tmp_path / "cache" / "compleak" / "logs"

        with quiet("report", run, verbose=True) as loud:  # -v: nothing redirected
            os.write(2, b"visible\n")
        assert loud.path is None and "visible" in capfd.readouterr().err
