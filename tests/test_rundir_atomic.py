"""rundir.atomic_path: the one write-to-a-temp-file-then-rename primitive."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rundir import atomic_path, atomic_write_bytes


def _leftovers(folder: Path, target: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != target)


def test_success_replaces_target(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    inode_before = target.stat().st_ino
    with atomic_path(target) as tmp:
        assert tmp != target
        assert tmp.is_file()  # exists (empty) while the block runs
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # the target is untouched until the block ends
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode_before  # renamed onto, not rewritten in place
    assert _leftovers(tmp_path, target) == []


def test_temp_is_hidden_and_in_the_same_folder(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "registry.json"  # missing folders are created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".registry.json.")
        assert tmp.name.endswith(".tmp")
        assert tmp.stat().st_dev == target.parent.stat().st_dev
        tmp.write_text("{}")
    assert target.read_text() == "{}"


def test_accepts_a_str_path(tmp_path: Path) -> None:
    with atomic_path(str(tmp_path / "a.txt")) as tmp:
        assert isinstance(tmp, Path)
        tmp.write_text("x")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_keep_suffix(tmp_path: Path) -> None:
    target = tmp_path / "tf-original.keras"
    with atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".tf-original.keras.")
        assert tmp.suffix == ".keras"
        tmp.write_bytes(b"zip")
    assert target.read_bytes() == b"zip"
    assert _leftovers(tmp_path, target) == []


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_is_applied(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "key"
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_bytes(b"secret")
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_default_mode_follows_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    old = os.umask(0o027)
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # like any new file: 0666 less the umask


def test_exception_keeps_old_target_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "splits.npz"
    target.write_bytes(b"old")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target, mode=0o644) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half-written")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert not seen[0].exists()
    assert _leftovers(tmp_path, target) == []


def test_exception_without_target_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "child").write_text("keep")  # os.replace of a file onto a non-empty folder fails
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
    assert (target / "child").read_text() == "keep"
    assert _leftovers(tmp_path, target) == []


def test_fsyncs_before_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.npz"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert events == ["fsync", "replace"]
    assert _leftovers(tmp_path, target) == []
