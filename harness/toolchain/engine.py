"""The container engine: the Podman or Docker command line (argv lists, never shell strings) with the flags each
needs on this kind of host (Podman: ``--runtime runc``, ``nofile``/``nproc`` ulimits), and running a long command
with its progress on the console. Every failure is a one-line :class:`~harness.errors.HarnessError`."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from harness.errors import HarnessError, esc


def say(console: Console | None, text: str) -> None:
    if console is not None:  # literally: texts carry paths, names and URIs, never markup
        console.print(text, highlight=False, markup=False)



@dataclass(frozen=True)
class Engine:
    """The container engine command line.

    name: ``podman`` or ``docker``; exe: its absolute path.
    """

    name: str
    exe: str

    def base_cmd(self) -> list[str]:
        """argv prefix; Podman gets ``--runtime runc`` when runc is installed (crun fails on this kind of host)."""
        if self.name == "podman" and shutil.which("runc"):
            return [self.exe, "--runtime", "runc"]
        return [self.exe]

    def limits(self) -> list[str]:
        """Flags for ``run``/``build`` that keep processes within the host's limits (Podman's defaults exceed them)."""
        if self.name == "podman":
            return ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        return []

    def call(
        self, args: list[str], what: str, timeout: float | None = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ENGINE args`` and capture its output; on failure raise a one-line error about ``what``."""
        try:
            res = subprocess.run(self.base_cmd() + args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} {args[0]}: {what} did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise HarnessError(f"cannot run {self.exe} ({exc.strerror}); check the --engine path") from None
        if check and res.returncode != 0:
            reason = last_line(res.stderr or res.stdout) or f"{self.name} exit {res.returncode}"
            raise HarnessError(f"{what} failed: {reason}")
        return res

    def stream(self, args: list[str], what: str, console: Console | None, echo: bool = False) -> None:
        """Run ``ENGINE args`` showing its progress (last line in a status spinner, or every line with ``echo``);
        one-line error on failure."""
        stream_command(self.base_cmd() + args, what, console, echo=echo)

    def image_exists(self, ref: str) -> bool:
        """True when ``ref`` is in the engine's local storage."""
        if self.name == "podman":
            return self.call(["image", "exists", ref], f"looking up image {ref}", check=False).returncode == 0
        return self.call(["image", "inspect", ref], f"looking up image {ref}", check=False).returncode == 0

    def image_id(self, ref: str) -> str:
        """Full image id (``sha256:...``) of a local image."""
        return self.call(["image", "inspect", "--format", "{{.Id}}", ref], f"inspecting image {ref}").stdout.strip()

    def image_labels(self, ref: str) -> dict[str, str]:
        """The labels of a local image."""
        import json

        out = self.call(["image", "inspect", "--format", "{{json .Config.Labels}}", ref], f"inspecting image {ref}")
        try:
            return json.loads(out.stdout.strip() or "{}") or {}
        except ValueError:
            return {}

    def container_state(self, name: str) -> str | None:
        """``running``, ``exited``, ... or None when no container ``name`` exists."""
        res = self.call(
            ["container", "inspect", "--format", "{{.State.Status}}", name], f"inspecting {name}", check=False
        )
        return res.stdout.strip() or None if res.returncode == 0 else None

    def require_image(self, ref: str, build_hint: str) -> None:
        """Raise a one-line error naming the command that builds ``ref`` when it is missing."""
        if not self.image_exists(ref):
            raise HarnessError(f"image {ref} not found in {self.name}; build it with: {build_hint}")


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


_MILESTONES = ("STEP ", "I: Retrieving Release", "I: Configuring openssh-server", "I: Base system installed",
               "Successfully installed", "COMMIT ")


def stream_command(argv: list[str], what: str, console: Console | None, env: dict[str, str] | None = None,
            echo: bool = False) -> None:
    """Run argv, showing its latest output line as progress; keep a tail for the error message."""
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    except OSError as exc:
        raise HarnessError(f"cannot run {argv[0]} ({exc.strerror})") from None
    assert proc.stdout is not None
    live = console is not None and console.is_terminal and not echo
    status = console.status(esc(what)) if live else None
    try:
        if status is not None:
            status.start()
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            if echo and console is not None:
                console.print(line, highlight=False, markup=False)
            elif status is not None:
                status.update(f"{esc(what)}: [dim]{escape(line[:110])}[/]")
            elif console is not None and line.startswith(_MILESTONES):  # logs (CI): milestones only
                console.print(f"{what}: {line[:160]}", highlight=False, markup=False, soft_wrap=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    finally:
        if status is not None:
            status.stop()
    if rc != 0:
        # the engine's own "Error: building at STEP ..." only repeats the command: prefer the step's own error
        useful = [ln for ln in tail if not ln.startswith(("Error: building at STEP", "STEP ", "--> "))]
        errors = [ln for ln in useful if re.search(r"error|failed|denied|not found|cannot|no matching", ln, re.I)]
        detail = (errors[-1] if errors else (useful or list(tail) or [f"exit status {rc}"])[-1]).removeprefix("error: ")
        raise HarnessError(f"{what} failed: {detail}")


def detect_engine(engine: str | None = None) -> Engine:
    """The container engine to use: ``engine`` (``podman``, ``docker`` or a path to either), else Podman, else
    Docker."""
    if engine:
        exe = shutil.which(engine)
        name = Path(engine).name
        if name not in ("podman", "docker"):
            raise HarnessError(f"--engine '{engine}': unsupported container engine; use podman or docker")
        if exe is None:
            raise HarnessError(f"container engine '{engine}' not found; install {name} or pass --engine with its path")
        return Engine(name, exe)
    for name in ("podman", "docker"):
        exe = shutil.which(name)
        if exe:
            return Engine(name, exe)
    raise HarnessError(
        "no container engine found (podman or docker); install podman (e.g. apt-get install podman runc)"
    )


def image_size(eng: Engine, ref: str) -> int:
    """Size in bytes of a local image (as the engine reports it)."""
    out = eng.call(["image", "inspect", "--format", "{{.Size}}", ref], f"inspecting image {ref}").stdout.strip()
    return int(out) if out.isdigit() else 0
