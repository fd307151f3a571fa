"""Folders written whole or not at all."""

import pytest

from ctxsae_common.files import write_folder_atomic


def test_a_folder_is_written_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "sub" / "model"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")

    def write(tmp):
        assert tmp.parent == target.parent and tmp != target and not any(tmp.iterdir())
        (tmp / "a.txt").write_text("a")
        (tmp / "b").mkdir()
        (tmp / "b" / "c.txt").write_text("c")

    assert write_folder_atomic(target, write) == target
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["a.txt", "b", "b/c.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_a_failed_write_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def write(tmp):
        (tmp / "half.txt").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_folder_atomic(target, write)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
