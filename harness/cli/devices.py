"""``compleak devices list`` and ``compleak devices probe URI``."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from rich.console import Console
from rich.table import Table

from devices.errors import DeviceError
from devices.spec import DeviceSpec, as_spec
from harness.errors import esc, literal_log


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


def adb_devices(timeout: float = 15.0) -> list[dict[str, str]]:
    """Entries of ``adb devices -l`` (serial, state and the key:value fields), [] when adb is not installed."""
    adb = shutil.which("adb")
    if adb is None:
        return []
    try:
        res = subprocess.run([adb, "devices", "-l"], capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise DeviceError(f"adb devices did not answer ({exc.__class__.__name__}); try `adb kill-server`") from None
    entries = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(("List of devices", "*")):
            continue
        entry = {"serial": parts[0], "state": parts[1]}
        entry.update(p.split(":", 1) for p in parts[2:] if ":" in p)  # type: ignore[arg-type]
        entries.append(entry)
    return entries


def _edge_devices() -> list[Any]:
    try:
        from devices.known_devices import known_devices
    except ModuleNotFoundError:
        return []
    return list(known_devices())


def print_json(console: Console, data: Any) -> None:
    """``data`` as indented JSON on ``console``, literally (no markup, highlighting or wrapping): for scripts."""
    console.print(json.dumps(data, indent=2, default=str), markup=False, highlight=False, soft_wrap=True)


def list_devices(console: Console, as_json: bool = False) -> list[dict[str, str]]:
    """Print the devices this tool can see: this host, adb devices, and edge containers it started, as a table or
    (``as_json``) a JSON list of ``{"id", "kind", "state", "details"}``; return that list."""
    import platform
    import sys

    found = [{"id": "local", "kind": "this host", "state": "ready",
              "details": f"{platform.machine()}, Python {platform.python_version()} ({sys.executable})"}]
    for e in adb_devices():
        details = ", ".join(f"{k}={e[k]}" for k in ("model", "device", "product", "transport_id") if k in e)
        kind = "android emulator" if e["serial"].startswith("emulator-") else "android (adb)"
        found.append({"id": f"adb://{e['serial']}", "kind": kind, "state": e["state"], "details": details})
    for d in _edge_devices():
        meta = getattr(d, "meta", {}) or {}
        details = ", ".join(f"{k}={meta[k]}" for k in ("arch", "image", "engine") if k in meta)
        found.append({"id": d.uri, "kind": f"edge container {d.name}", "state": "registered", "details": details})
    if as_json:
        print_json(console, found)
        return found
    table = Table(title="devices", show_lines=False)
    for col in ("device id", "kind", "state", "details"):
        table.add_column(col)
    for f in found:
        table.add_row(*(esc(f[k]) for k in ("id", "kind", "state", "details")))
    console.print(table)
    if shutil.which("adb") is None:
        console.print("[dim]adb not installed: Android devices are not listed (apt-get install adb)[/]")
    return found


def _buildable(runners: dict[str, str]) -> None:
    """Say in ``runners["native"]`` whether a missing native bundle can be built on this host (cmake and, for another
    architecture, the cross compiler), so the probe tells the whole story."""
    line = runners.get("native", "")
    if not line.startswith("not built:"):
        return
    from harness.toolchain.cross import CROSS_TRIPLES, host_arch

    arch = line.rsplit("--arch", 1)[-1].strip()
    missing = [] if shutil.which("cmake") else ["cmake"]
    if arch != host_arch():
        triple = CROSS_TRIPLES.get(arch)
        if triple is None:
            missing.append(f"a cross toolchain for {arch}")
        elif shutil.which(f"{triple}-g++") is None:
            missing.append(f"g++-{triple}")
    runners["native"] = line + ("; buildable on this host" if not missing else
                                f"; this host lacks {', '.join(missing)} to build it")


def probe_device(
    device: DeviceSpec | str,
    console: Console | None = None,
    as_json: bool = False,
    notes: Console | None = None,
) -> dict[str, Any]:
    """Connect to ``device`` and print its properties as a table, or (``as_json``) as the JSON object
    ``DeviceProperties.to_dict()``; return that dict. Connection notes (a recorded host key) go to ``notes``
    (default ``console``; the CLI gives its stderr console so that JSON on stdout stays clean)."""
    from devices.runners.choose import probe

    console = console or Console()
    dev = as_spec(device).connect(log=literal_log(notes or console))
    try:
        props = probe(dev)
    finally:
        dev.close()
    _buildable(props.runners)
    if as_json:
        print_json(console, props.to_dict())
        return props.to_dict()
    table = Table(title=esc(props.id), show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("architecture", props.arch),
        ("OS", props.os),
        ("hostname", props.hostname),
        ("Android API level", props.android_api),
        ("Android ABI", props.android_abi),
        ("SoC", props.soc),
        ("model", props.model),
        ("Python", props.python or "none (binary runners only)"),
        ("NumPy", props.numpy),
    ]
    for name, version in sorted(props.runtimes.items()):
        rows.append((f"runtime {name}", version))
    if props.python and not props.runtimes:
        rows.append(("runtimes", "none found (pip install tflite-runtime / onnxruntime on the device)"))
    rows.append(("C library", props.libc))
    for kind, line in sorted(props.runners.items()):
        rows.append((f"runner {kind}", line))
    rows += [("free space", _human_bytes(props.free_bytes)), ("workspace base", props.workspace_base)]
    for key, value in sorted(props.extra.items()):
        if key != "python_cmd":
            rows.append((key, value if isinstance(value, str) else ", ".join(map(str, value))
                         if isinstance(value, (list, tuple)) else str(value)))
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(esc(key), esc(value))
    console.print(table)
    return props.to_dict()


def device_up(name: str, runtimes: list[str], engine: str | None, port: int | None, console: Console,
              notes: Console) -> str:
    """Start device ``name`` (a phone-shaped device for ``phone-*``, else an edge container); return its URI.
    Progress notes of a phone build go to ``notes`` (stderr), so that stdout holds only the URI."""
    if name.startswith("phone-"):
        from harness.errors import HarnessError
        from harness.toolchain.phone import phone_up

        if runtimes or engine:
            raise HarnessError(f"{name} has no Python and no container: --runtime / --engine do not apply")
        return phone_up(name, port=port, console=notes)
    from harness.toolchain.edge import edge_up

    return edge_up(name, runtimes=runtimes, engine=engine, port=port, console=console)


def device_down(name: str, engine: str | None, console: Console, notes: Console) -> None:
    """Stop device ``name`` started by :func:`device_up`."""
    if name.startswith("phone-"):
        from harness.toolchain.phone import phone_down

        phone_down(name, console=notes)
        return
    from harness.toolchain.edge import edge_down

    edge_down(name, engine=engine, console=console)
