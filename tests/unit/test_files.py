"""host.files.atomic_write: the one way result files are written."""

from __future__ import annotations

import os

import pytest

from host.files import TEMP_SUFFIX, atomic_write


def test_writes_text_and_bytes_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write(path, "first\n")
    assert path.read_text() == "first\n"
    assert atomic_write(path, b"\x00second") == path
    assert path.read_bytes() == b"\x00second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary left behind


def test_a_write_that_fails_before_the_rename_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    atomic_write(path, "old")

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert (tmp_path / ("report.html" + TEMP_SUFFIX)).read_text() == "new"  # the next write replaces it


def test_a_missing_directory_is_an_error_not_a_new_tree(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "junit.xml", "x")
    assert not (tmp_path / "missing").exists()
