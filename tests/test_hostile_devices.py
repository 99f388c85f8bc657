"""Hostile devices and hostile neighbours (issue 11, items 4, 5, 8, 9).

- item 4: a runner that speaks garbled, non-JSON, wrongly typed or absurd frames, or never says hello, is one line
  and no MemoryError (real subprocesses speaking bad frames through the local device); outputs whose shape disagrees
  with the manifest are refused and nothing is stored; stored bad outputs are redone; SSH reads are bounded (real
  sshd).
- item 5: a workspace base planted by a second local user (``useradd``: owned by them, or a symlink to a root-owned
  directory) or writable by others is refused and the planted target is untouched; job directories a killed run
  left are removed (locally and over SSH).
- item 8: ``queries.npz`` with raw uint8 pixels, conflicting duplicate ids or the wrong shape is refused.
- item 9: a second collect on the same run and device fails at once naming the holder; a dead holder's lock does
  not block; nothing is left behind.

Every case goes through the shared check (``hostile_fixtures.check``; a stage's error judged as the CLI prints it):
exit 2, one ``error:`` line, no traceback, the run (or, with no run, where one would be: still absent) and a sentinel
folder beside it byte-identical.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hostile_fixtures import Site, check, cli, copy_run, make_site
from sshd_fixtures import SshServer

from devices.base import JOB_MARKER
from devices.local import LocalDevice
from devices.ondevice import compleak_runner as cr
from devices.runners.server import RunnerServer
from devices.uri import connect
from rundir import OutputBatch, RunDir

ROOT = Path(__file__).resolve().parents[1]
ART = "tf-target-original.tflite"
X = np.zeros((3, 8, 8, 1), np.float32)


# --------------------------------------------------------------------------- helpers


def hostile_runner(path: Path, data: bytes) -> Path:
    """A "runner" (a real Python process started through the local device) that writes ``data`` to its protocol
    stream at once and then waits; ``data`` usually starts with a valid hello."""
    path.write_text(
        "import sys, time\n"
        f"sys.stdout.buffer.write({data!r}); sys.stdout.buffer.flush()\n"
        "time.sleep(120)\n"
    )
    return path


def hello() -> bytes:
    return cr.frame({"ok": True, "hello": "compleak-runner", "protocol": cr.PROTOCOL, "python": "3", "numpy": "2"})


def loaded() -> bytes:
    return cr.frame({"ok": True, "info": {}, "load_seconds": 0.0})


def raw_frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def served(tmp_path: Path, data: bytes, **kw: object) -> RunnerServer:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "ws")
    runner = hostile_runner(tmp_path / "hostile.py", data)
    return RunnerServer(dev, [sys.executable], runner=runner, **kw)  # type: ignore[arg-type]


def short(line: str | None) -> str:
    """The error line, no longer than a screenful (a hostile reply must not be echoed whole)."""
    assert line is not None and len(line) < 710, line
    return line


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    return copy_run(tiny_run, tmp_path / "run")


@pytest.fixture
def site(run: Path) -> Site:
    """The private run copy and a sentinel folder beside it."""
    return make_site(run)


@pytest.fixture
def nowhere(tmp_path: Path) -> Site:
    """For a stage case with no run: ``tmp/run`` must stay absent and the sentinel ``tmp/victim`` untouched."""
    return make_site(tmp_path / "run")


def target_ids(run: Path) -> np.ndarray:
    splits = RunDir(run).load_splits()
    return splits.collected_ids("target")


# --------------------------------------------------------------------------- item 4: runner-server frames


@pytest.mark.parametrize(
    "reply, expect",
    [
        (b"\x00\x00\x00\x07{{{{{{{", "not JSON"),  # garbled header
        (raw_frame(b"\xff\xfe\xfd"), "not JSON"),  # not even UTF-8
        (b"\xff\xff\xff\xff", "4294967295-byte header"),  # absurd header length
        (raw_frame(b"[1, 2, 3]"), "JSON list header"),  # JSON, but not an object
        (raw_frame(b'{"ok": "yes"}'), "no true/false 'ok'"),  # wrong type
        (raw_frame(b'{"ok": true, "bytes": "12"}'), "'bytes' is '12'"),  # wrong type
        (raw_frame(b'{"ok": true, "bytes": -5}'), "'bytes' is -5"),  # absurd value
        (cr.frame({"ok": True, "bytes": 2 ** 45, "shape": [3, 10]}), "35184372088832-byte payload"),  # 2^45
        (cr.frame({"ok": True, "bytes": 12, "shape": ["3", "1"]}) + b"\0" * 12, "output shape ['3', '1']"),
        (cr.frame({"ok": True, "bytes": 120, "shape": [3, 10], "meta": [1]}) + b"\0" * 120, "'meta' is [1]"),
        (cr.frame({"ok": False, "error": "x", "bytes": 9}) + b"\0" * 9, "an error reply with a payload"),
    ],
    ids=["garbled", "not-utf8", "absurd-header", "json-list", "ok-str", "bytes-str", "bytes-negative",
         "payload-2^45", "shape-str", "meta-list", "error-with-payload"],
)
def test_bad_infer_reply_is_one_line_and_stops_the_runner(tmp_path: Path, nowhere: Site, reply: bytes,
                                                          expect: str) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not used by the hostile runner")
    with served(tmp_path, hello() + loaded() + reply) as server:
        server.load(model, "tflite", "ai_edge_litert")
        line = check(lambda: server.infer(X, batch_size=2, timeout_s=20, n_classes=10), expect, "rerun collect",
                     site=nowhere).line
        assert short(line).startswith("error: local: the runner's reply to inference on 3 queries is garbled (")
        assert not server.alive  # out of step: stopped, so a pool starts a fresh one


@pytest.mark.parametrize(
    "data, expect",
    [
        (b"hello world, I am not a runner\n", "1751477356-byte header"),  # text on stdout before the protocol
        (raw_frame(b'{"ok": true, "hello": "someone else", "protocol": 1}'), "a hello without"),
        (raw_frame(b'{"ok": true, "hello": "compleak-runner", "protocol": "1"}'), "a hello without"),
    ],
    ids=["text", "wrong-hello", "protocol-str"],
)
def test_bad_hello_is_one_line(tmp_path: Path, nowhere: Site, data: bytes, expect: str) -> None:
    with served(tmp_path, data) as server:
        short(check(server.ready, "reply to start-up is garbled", expect, site=nowhere).line)
        assert not server.alive


def test_runner_that_never_says_hello_times_out(tmp_path: Path, nowhere: Site) -> None:
    with served(tmp_path, b"", hello_timeout_s=1.5) as server:
        short(check(server.ready, "the runner did not start within 1.5s", "--start-timeout",
                    "compleak devices probe local", site=nowhere).line)
        assert not server.alive


@pytest.mark.parametrize(
    "shape, nbytes, expect",
    [([3, 3], 36, "shape [3, 3]"), ([3, 0], 0, "shape [3, 0]"), ([2, 10], 80, "shape [2, 10]")],
    ids=["3-classes", "0-classes", "wrong-rows"],
)
def test_output_shape_not_the_manifests_is_refused(tmp_path: Path, nowhere: Site, shape: list[int], nbytes: int,
                                                    expect: str) -> None:
    reply = cr.frame({"ok": True, "bytes": nbytes, "shape": shape, "meta": {}}) + b"\0" * nbytes
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    with served(tmp_path, hello() + loaded() + reply) as server:
        server.load(model, "tflite", "ai_edge_litert")
        short(check(lambda: server.infer(X, batch_size=2, timeout_s=20, n_classes=10), expect, "expected [3, 10]",
                    "nothing was stored", site=nowhere).line)
        assert not server.alive  # its payload was never read: out of step, stopped


def test_multiline_error_reply_is_one_line_and_the_runner_keeps_serving(tmp_path: Path, nowhere: Site) -> None:
    error = cr.frame({"ok": False, "error": "line one\nline two\n" + "x" * 5000})
    good = cr.frame({"ok": True, "bytes": 120, "shape": [3, 10], "meta": {}, "batch_seconds": [0.1, "bad"],
                     "batch_sizes": [2, 1]}) + np.ones((3, 10), np.float32).tobytes()
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    with served(tmp_path, hello() + loaded() + error + good) as server:
        server.load(model, "tflite", "ai_edge_litert")
        line = check(lambda: server.infer(X, batch_size=2, timeout_s=20, n_classes=10), site=nowhere).line
        assert short(line).startswith("error: line one line two xxx")
        values, header = server.infer(X, batch_size=2, timeout_s=20, n_classes=10)  # still in step
        assert values.shape == (3, 10) and header["batch_seconds"] == [0.1] and server.alive


@pytest.mark.hostile_exempt("the device-side runner's own reader: its errors are protocol replies, not CLI exits "
                             "(they reach the host as one DeviceError line: test_real_runner_given_garbage_...)")
def test_runner_reader_refuses_bad_requests() -> None:
    for data, expect in [(b"\xff\xff\xff\xff", "4294967295-byte message header"),
                         (raw_frame(b"{nope"), "not JSON"), (raw_frame(b"[]"), "JSON list header"),
                         (raw_frame(b'{"op": "infer", "bytes": "7"}'), "'bytes' is '7'")]:
        with pytest.raises(cr.RunnerError, match="protocol error: ") as exc:
            cr.read_message(io.BytesIO(data))
        assert expect in str(exc.value)


def test_real_runner_given_garbage_answers_one_error_and_exits(tmp_path: Path, nowhere: Site) -> None:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "ws")
    with RunnerServer(dev, [sys.executable]) as server:
        proc = server.ready()
        proc.send(raw_frame(b"[1, 2]"), time.monotonic() + 20)
        check(lambda: server._reply("garbage", time.monotonic() + 20),
              "protocol error: a JSON list header instead of an object", site=nowhere)
        deadline = time.monotonic() + 20
        while proc.exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.exit_status() == 3


# --------------------------------------------------------------------------- item 4: outputs vs the manifest (CLI)


def test_outputs_disagreeing_with_the_manifest_are_refused_and_nothing_stored(site: Site) -> None:
    run = site.run
    manifest = json.loads((run / "manifest.json").read_text())
    rec = next(a for a in manifest["artifacts"] if a["id"] == ART)
    rec["outputs"][0]["shape"] = [-1, 3]  # the manifest says 3 classes; the model answers 10
    (run / "manifest.json").write_text(json.dumps(manifest))
    check(["collect", str(run), "--artifacts", ART], ART, "shape [600, 10]", "expected [600, 3]", "manifest",
          "nothing was stored", site=site)


def test_stored_bad_outputs_and_chunks_are_redone(site: Site) -> None:
    run = site.run
    rd = RunDir(run)
    redo = {"site": site, "status": 0, "errors": 0, "writes": ("outputs", "logs"),
            "why": "stored outputs of the wrong class count are not trusted: collect recomputes them (outputs/ only)"}
    rec = rd.load_manifest().by_id(ART)
    ids = target_ids(run)
    assert cli(["collect", str(run), "--artifacts", ART]).exit_code == 0
    good = rd.load_outputs("local", ART).values
    # an earlier release stored [N, 3] outputs as finished: now they are not done and are collected again
    OutputBatch(ids, np.zeros((len(ids), 3), np.float32)).save(rd.output_npz("local", ART))
    check(["collect", str(run), "--artifacts", ART], **redo)
    np.testing.assert_allclose(rd.load_outputs("local", ART).values, good, atol=1e-6)
    # a stored chunk of the wrong class count is recomputed, not reused
    rd.output_npz("local", ART).unlink()
    chunk = rd.outputs_dir("local") / ".partial" / ART / rec.sha256[:16] / f"0-{len(ids)}.npz"
    chunk.parent.mkdir(parents=True)
    np.savez(chunk, index=ids, values=np.zeros((len(ids), 0), np.float32))
    chunk.with_suffix(".json").write_text("{}")
    check(["collect", str(run), "--artifacts", ART], **redo)
    np.testing.assert_allclose(rd.load_outputs("local", ART).values, good, atol=1e-6)
    assert not chunk.exists()


def test_start_timeout_option_is_checked(site: Site) -> None:
    check(["collect", str(site.run), "--artifacts", ART, "--start-timeout", "-1"], "--start-timeout", "-1", site=site)


# --------------------------------------------------------------------------- item 4: ssh reads are bounded


@pytest.mark.ssh
def test_ssh_reads_are_bounded(sshd_server: SshServer, tmp_path: Path) -> None:
    with connect(sshd_server.uri, identity=sshd_server.identity, known_hosts=sshd_server.known_hosts) as dev:
        dev.max_output_bytes = 4096
        site = make_site(tmp_path / "run", also=[tmp_path])
        short(check(lambda: dev.run(["head", "-c", "1000000", "/dev/zero"], timeout=30), "printed more than 4096 bytes",
                    site=site).line)
        assert dev.run(["echo", "still usable"], timeout=30).text.strip() == "still usable"
        big = tmp_path / "big.bin"  # the sshd runs on this host: the file is the device's too
        big.write_bytes(os.urandom(5000))
        dev.max_file_bytes = 1000
        short(check(lambda: dev.get(str(big), tmp_path / "copy.bin"), "larger than 1000 bytes", site=site).line)
        assert not (tmp_path / "copy.bin").exists()
        dev.max_file_bytes = 5000
        dev.get(str(big), tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()


# --------------------------------------------------------------------------- item 5: private workspaces


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second local user (created with useradd, removed with userdel afterwards; needs root)."""
    if os.geteuid() != 0:
        pytest.skip("adding a second local user needs root: run the suite as root (as CI does)")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is missing: install passwd (apt install passwd)")
    name = "compleak-h2x"
    try:
        yield pwd.getpwnam(name)  # left by an interrupted session: reuse it
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user: pwd.struct_passwd, *argv: str) -> None:
    subprocess.run(list(argv), user=user.pw_uid, group=user.pw_gid, extra_groups=[], check=True,
                   capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A /tmp-like directory (mode 1777) used as this process's temp dir, so the local workspace base lands there."""
    d = Path(tempfile.mkdtemp(prefix="compleak-hostile-", dir="/tmp"))
    os.chmod(d, 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def base_name() -> str:
    return f"compleak-{pwd.getpwuid(os.geteuid()).pw_name}"


def test_base_pre_created_by_another_user_is_refused(site: Site, shared_tmp: Path, other_user) -> None:
    planted = shared_tmp / base_name()
    as_user(other_user, "mkdir", "-m", "700", str(planted))
    check(["collect", str(site.run), "--artifacts", ART], str(planted), f"owned by uid {other_user.pw_uid}",
          "remove it", "rm -rf", site=site.plus(shared_tmp))
    assert planted.stat().st_uid == other_user.pw_uid


def test_base_symlink_planted_by_another_user_is_refused_and_its_target_untouched(
    site: Site, shared_tmp: Path, other_user
) -> None:
    victim = site.sentinel  # root's own directory with root-owned files in it: the link's target
    as_user(other_user, "ln", "-s", str(victim), str(shared_tmp / base_name()))
    check(["collect", str(site.run), "--artifacts", ART], str(shared_tmp / base_name()), "a symlink", "remove it",
          site=site.plus(shared_tmp))
    assert (victim / "important.txt").read_text() == "must survive\n"


def test_group_or_world_writable_base_is_refused(shared_tmp: Path, nowhere: Site) -> None:
    base = shared_tmp / base_name()
    base.mkdir()
    os.chmod(base, 0o777)
    short(check(lambda: LocalDevice().workspace_base(), "group/world-writable (mode 0777)", str(base),
                site=nowhere.plus(shared_tmp)).line)


def test_workspaces_are_private_with_unpredictable_names(tmp_path: Path, nowhere: Site) -> None:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    with dev.workspace() as a, dev.workspace() as b:
        assert a != b and os.stat(dev.workspace_base()).st_mode & 0o777 == 0o700
        for ws in (a, b):
            assert os.stat(ws).st_mode & 0o777 == 0o700 and len(Path(ws).name) >= len("job.") + 8
            marker = json.loads((Path(ws) / JOB_MARKER).read_text())
            assert marker["pid"] == os.getpid() and marker["host"] == socket.gethostname()
        # copies never write through an existing name (a planted symlink included): its target is the sentinel
        target = nowhere.sentinel / "important.txt"
        os.symlink(target, f"{a}/model-1.tflite")
        src = tmp_path / "model.bin"
        src.write_bytes(b"model")
        short(check(lambda: dev.put(src, f"{a}/model-1.tflite"), "cannot create", site=nowhere.plus(a)).line)
        assert target.read_text() == "must survive\n"


def _killed_workspace_holder(code: str) -> str:
    """Run ``code`` (which prints a workspace path and waits) in a subprocess, SIGKILL it; return the path."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        path = proc.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert path, "the helper printed no workspace"
    return path


@pytest.mark.hostile_exempt("no refusal: the cleanup of what a killed run left; asserts which job folders go "
                             "and which (a live or a foreign holder's) stay")
def test_stale_local_job_dirs_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    base = tmp_path / "base"
    stale = _killed_workspace_holder(
        "import time; from devices.local import LocalDevice\n"
        f"d = LocalDevice(); d.base_dir = {str(base)!r}\n"
        "cm = d.workspace(); ws = cm.__enter__(); print(ws, flush=True)\n"
        "time.sleep(120)\n"
    )
    assert Path(stale).is_dir()
    live = subprocess.Popen(["sleep", "120"])
    try:
        keep_live, keep_foreign = base / "job.live0000", base / "job.foreign00"
        for d, owner in ((keep_live, {"pid": live.pid, "host": socket.gethostname()}),
                         (keep_foreign, {"pid": 1 << 22, "host": "another-host"})):
            d.mkdir(mode=0o700)
            (d / JOB_MARKER).write_text(json.dumps(owner))
        dev = LocalDevice()
        dev.base_dir = str(base)
        with dev.workspace() as ws:
            assert not Path(stale).exists() and keep_live.is_dir() and keep_foreign.is_dir() and Path(ws).is_dir()
        assert not Path(ws).exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.ssh
def test_ssh_workspace_rules(sshd_server: SshServer, tmp_path: Path, other_user) -> None:
    kw = dict(identity=sshd_server.identity, known_hosts=sshd_server.known_hosts)
    base = tmp_path / "remote base"
    stale = _killed_workspace_holder(
        "import time; from devices.uri import connect\n"
        f"d = connect({sshd_server.uri!r}, identity={str(sshd_server.identity)!r}, "
        f"known_hosts={str(sshd_server.known_hosts)!r}, workspace={str(base)!r})\n"
        "cm = d.workspace(); ws = cm.__enter__(); print(ws, flush=True); time.sleep(120)\n"
    )
    assert Path(stale).is_dir() and os.stat(base).st_mode & 0o777 == 0o700
    with connect(sshd_server.uri, workspace=str(base), **kw) as dev:
        with dev.workspace() as ws:
            assert not Path(stale).exists() and Path(ws, JOB_MARKER).is_file()
    planted = tmp_path / "planted"
    planted.mkdir()
    os.chown(planted, other_user.pw_uid, other_user.pw_gid)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "base-target")
    (tmp_path / "base-target").mkdir(mode=0o700)
    site = make_site(tmp_path / "run", also=[planted, tmp_path / "base-target"])
    for where, expect in ((planted, "owned by another user"), (link, "a symlink")):
        with connect(sshd_server.uri, workspace=str(where), **kw) as dev:
            short(check(dev.workspace_base, f"workspace base {where} is {expect}", "remove it", site=site).line)


# --------------------------------------------------------------------------- item 8: queries.npz


def _queries(run: Path, x: np.ndarray | None = None, index: np.ndarray | None = None) -> None:
    ids = target_ids(run)
    index = ids if index is None else index
    x = np.random.default_rng(0).random((len(index), 8, 8, 1), dtype=np.float32) if x is None else x
    np.savez(run / "queries.npz", index=index, x=x)


def test_queries_npz_with_raw_uint8_pixels_is_refused(site: Site) -> None:
    run = site.run
    _queries(run, x=np.full((len(target_ids(run)), 8, 8, 1), 16, np.uint8))
    check(["collect", str(run), "--artifacts", ART], "queries.npz", "x is uint8", "raw pixels", "preprocess",
          site=site)


def test_queries_npz_duplicate_ids_with_conflicting_rows_are_refused(site: Site) -> None:
    run = site.run
    ids = target_ids(run)
    x = np.random.default_rng(1).random((len(ids) + 1, 8, 8, 1), dtype=np.float32)
    _queries(run, x=x, index=np.concatenate([ids, ids[5:6]]))
    check(["collect", str(run), "--artifacts", ART], "queries.npz", f"example id {int(ids[5])}",
          "more than once with different inputs", site=site)


@pytest.mark.parametrize("kind", ["shape", "index-dtype", "not-a-zip"])
def test_queries_npz_of_the_wrong_shape_or_kind_is_refused(site: Site, kind: str) -> None:
    run = site.run
    if kind == "shape":
        _queries(run, x=np.zeros((len(target_ids(run)), 9, 9, 1), np.float32))
        expect = ["[M, 9, 9, 1]", ART, "[-1, 8, 8, 1]"]
    elif kind == "index-dtype":
        _queries(run, index=target_ids(run).astype(np.float64))
        expect = ["index is float64"]
    else:
        (run / "queries.npz").write_bytes(b"PK\x03\x04 not really a zip")
        expect = ["not a readable queries archive"]
    check(["collect", str(run), "--artifacts", ART], "queries.npz", *expect, site=site)


# --------------------------------------------------------------------------- item 9: one collect per run and device


def test_second_collect_on_the_same_run_and_device_fails_at_once(site: Site) -> None:
    run = site.run
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from rundir import RunDir; from harness.collect.guard import CollectLock\n"
         "CollectLock(RunDir(sys.argv[1]), 'local').acquire(); print('locked', flush=True); time.sleep(120)\n",
         str(run)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
        lock = run / ".collect-local.lock"
        check(["collect", str(run), "--artifacts", ART], "another collect on local", f"pid {holder.pid}",
              socket.gethostname(), "since", "wait for it to finish", site=site)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert lock.exists()  # the killed holder's lock file stays behind, but it does not block
    result = cli(["collect", str(run), "--artifacts", ART])
    assert result.exit_code == 0, result.output
    assert not lock.exists() and RunDir(run).output_npz("local", ART).is_file()


@pytest.mark.hostile_exempt("a unit test of the output check, a pure function that returns the reason (raises "
                             "nothing); its CLI refusal: test_outputs_disagreeing_with_the_manifest_...")
def test_output_check_refuses_nan_integer_and_out_of_range_probabilities(tiny_run: Path) -> None:
    from harness.collect.guard import bad_outputs

    rec = RunDir(tiny_run).load_manifest().by_id(ART)
    good = np.zeros((4, 10), np.float32)
    assert bad_outputs(rec, good, 4, 10) is None
    nan = good.copy()
    nan[2, 3] = np.nan
    assert bad_outputs(rec, nan, 4, 10) == "NaN/Inf outputs for 1 of 4 queries"
    assert bad_outputs(rec, good.astype(np.int32), 4, 10) == "outputs of dtype int32, not float"
    assert "[4, 10]" in str(bad_outputs(rec, good[:, :0], 4, 10))
    probs = rec.model_copy(update={"output_kind": "probs"})
    assert "outside [0, 1]" in str(bad_outputs(probs, good + 3.0, 4, 10))
    dynamic = rec.model_copy(update={"outputs": [rec.outputs[0].model_copy(update={"shape": [-1, -1]})]})
    assert bad_outputs(dynamic, good[:, :9], 4, 10) is not None  # fewer values than label classes
    assert bad_outputs(dynamic, np.zeros((4, 12), np.float32), 4, 10) is None


def test_adb_workspace_base_writable_by_others_is_refused(tmp_path_factory: pytest.TempPathFactory,
                                                          nowhere: Site) -> None:
    """The real adb client against the stand-in adbd (tests/adbd_standin.py): the base is checked on the device."""
    import test_adb

    if test_adb.ADB is None:
        pytest.skip("the adb client is missing: install it (apt install adb, or bash scripts/setup.sh --test)")
    server = test_adb.AdbServer(tmp_path_factory.mktemp("adbhome"))
    assert server.adb("start-server").returncode == 0
    daemon = test_adb.AdbdStandin(tmp_path_factory.mktemp("phone"), {"ro.product.model": "Pixel Standin"}).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
            mp.delenv("ADB_SERVER_SOCKET", raising=False)
            assert server.connect(daemon.serial) == "device"
            from devices.adb import AdbDevice

            dev = AdbDevice(daemon.serial, timeout=30)
            base = dev.workspace_base()
            assert base == "/data/local/tmp/compleak"
            host_base = daemon.sandbox.host_dir(base)
            assert os.stat(host_base).st_mode & 0o777 == 0o700
            os.chmod(host_base, 0o777)
            short(check(dev.workspace_base, f"workspace base {base} is group/world-writable (mode 777)",
                        site=nowhere).line)
    finally:
        server.adb("disconnect", daemon.serial)
        daemon.stop()
        server.adb("kill-server")
