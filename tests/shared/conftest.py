"""Fixtures of the store tests: a v1 store made from a v2 build (test_store_v2, test_consolidated)."""

from __future__ import annotations

import pytest

from tests.helpers import write_v1_layout


@pytest.fixture
def make_v1():
    """`make_v1(v2, out)`: a copy of store `v2` at `out` in schema v1's layout (returns `out`)."""
    return write_v1_layout
