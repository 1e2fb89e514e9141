"""Atomic outputs (shared/io.py): the permissions they get under the caller's umask, read without changing it."""

from __future__ import annotations

import os
import stat

import pytest

from pointad.shared.io import _umask, atomic_path


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_an_atomic_output_gets_the_mode_the_umask_allows(tmp_path, umask_027):
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("x")
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600



def test_the_umask_is_read_without_being_changed(umask_027):
    assert _umask() == 0o027 and os.umask(0o027) == 0o027
