"""Every test in this folder is a fault test (kills, hostile and tampered files, bounds, fuzzing): marked `faults`
here, at collection, so a new file here is marked too. `make test-fast` leaves them out; CI runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.faults)
