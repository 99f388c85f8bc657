"""A userspace TCP delay line: added latency where the kernel has no ``sch_netem`` (benchmarks only).

Each forward listens on a host address and connects every accepted connection to one target (a device's sshd).
Host -> device bytes pass at once; device -> host bytes are delayed by ``delay_ms``: every chunk read from the
device is stamped with its arrival time and written to the host ``delay_ms`` later, in order. Reading goes on
while earlier chunks wait, so it is a delay line (pipelined, bandwidth unchanged), not store-and-forward: it
behaves like ``tc qdisc add dev <veth in the device's namespace> root netem delay <delay_ms>ms`` (the delay on
the device's egress), so every round trip host -> device -> host takes ``delay_ms`` longer.

    python benchmarks/latency_proxy.py --delay-ms 50 --forward 10.231.7.2:22 [--forward HOST:PORT ...]

prints one line ``listening <port> <port> ...`` (one loopback port per ``--forward``, in order), then serves until
it is terminated. :func:`start_proxy` starts it as a child process and returns the ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 65536  # bytes per read
MAX_QUEUED = 4096  # chunks waiting in one direction (at most 256 MiB), then the reader waits


async def _pass(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Host -> device: forward each chunk at once; half-close the device side at the host's EOF."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _delay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Device -> host: each chunk leaves ``delay_s`` after it arrived, in arrival order (a delay line)."""
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED)

    async def read() -> None:
        try:
            while data := await reader.read(CHUNK):
                await line.put((time.monotonic() + delay_s, data))
        except (ConnectionError, OSError):
            pass
        await line.put((time.monotonic() + delay_s, b""))  # EOF travels the line too

    async def write() -> None:
        try:
            while True:
                due, data = await line.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):  # the host is gone: drain the line so the reader is never stuck
            while (await line.get())[1]:
                pass
        writer.close()

    await asyncio.gather(read(), write())


async def _serve_one(target: tuple[str, int], delay_s: float, down_r: asyncio.StreamReader,
                     down_w: asyncio.StreamWriter) -> None:  # fmt: skip
    """One host connection: connect to ``target`` and run both directions until the device side has closed."""
    try:
        up_r, up_w = await asyncio.open_connection(*target)
    except OSError:
        down_w.close()
        return
    tasks = [asyncio.ensure_future(_pass(down_r, up_w)), asyncio.ensure_future(_delay(up_r, down_w, delay_s))]
    try:
        await tasks[1]  # the device closed (after the delay): the connection is over
    except asyncio.CancelledError:  # the proxy is stopping: end quietly (no cancelled-callback log)
        tasks[1].cancel()
    tasks[0].cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
        await tasks[0]
    up_w.close()
    down_w.close()


async def serve(targets: list[tuple[str, int]], delay_ms: float, host: str = "127.0.0.1") -> None:
    """Listen on one free port of ``host`` per target, print ``listening <ports>``, and serve until cancelled."""
    delay_s = delay_ms / 1000.0
    servers = []
    for t in targets:
        servers.append(await asyncio.start_server(lambda r, w, t=t: _serve_one(t, delay_s, r, w), host, 0))
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("listening", *ports, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--forward {text!r}: give HOST:PORT, e.g. 10.231.7.2:22")
    return host.strip("[]"), int(port)


def start_proxy(targets: list[tuple[str, int]], delay_ms: float) -> tuple[subprocess.Popen, list[int]]:
    """Start the proxy as a child process (its own interpreter, so the benchmark's own work does not delay its
    timers); returns the process (terminate it when done) and the loopback port for each target, in order."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--delay-ms", str(delay_ms)]
    for host, port in targets:
        argv += ["--forward", f"{host}:{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"latency proxy did not start (said {line.strip()!r})")
    return proc, [int(p) for p in line.split()[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=50.0, help="added device -> host latency (ms)")
    ap.add_argument("--forward", type=_target, action="append", required=True, help="target HOST:PORT")
    a = ap.parse_args()
    asyncio.run(serve(a.forward, a.delay_ms))


if __name__ == "__main__":
    main()
