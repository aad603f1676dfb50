"""``setpoint.files.write_atomic``, which every rendered file goes through: whole files, the
mode asked for, no temporary file left behind, and writers of one file that do not clash."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from setpoint.files import write_atomic


def test_writes_the_content_with_the_mode_and_skips_an_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    old = os.umask(0o077)  # the mode asked for, whatever the umask
    try:
        assert write_atomic(path, b"one", 0o640)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"one" and (path.stat().st_mode & 0o7777) == 0o640
    before = path.stat()
    assert not write_atomic(path, b"one", 0o640)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert write_atomic(path, b"one", 0o600), "a change of mode alone is a write"
    assert (path.stat().st_mode & 0o7777) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_writers_of_one_file_in_one_process_never_clash(tmp_path: Path) -> None:
    """Threads of one process writing the same file: each write is whole, none fails, the file
    ends as one of them wrote it, and no temporary file is left."""
    path = tmp_path / "shared"
    size = 256 * 1024
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        data = bytes([ord("a") + n]) * size
        start.wait()
        try:
            for _ in range(30):
                write_atomic(path, data, 0o644)
                text = path.read_bytes()
                if len(text) != size or len(set(text)) != 1:
                    raise AssertionError(f"a mixed or partial file: {len(text)} bytes of {sorted(set(text))[:4]}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    content = path.read_bytes()
    assert len(content) == size and len(set(content)) == 1
    assert os.listdir(tmp_path) == ["shared"], "temporary files left behind"


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty directory: the rename onto it fails
    with pytest.raises(OSError):
        write_atomic(target, b"data", 0o644)
    assert sorted(os.listdir(tmp_path)) == ["dir"]
    assert os.listdir(target) == ["inside"]
