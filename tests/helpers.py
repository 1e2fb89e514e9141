"""What tests in several folders share: a free port and a stopped process group on loopback, and a v1 store made
from a v2 build. Imported as `tests.helpers` (the suite runs from the repository root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from pointad.shared.store_schema import ARRAYS, CAMERA_CONVENTION, V2_ONLY


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (start_new_session=True), SIGKILL it if it has not gone within 10 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def write_v1_layout(v2: Path, out: Path) -> Path:
    """The same store in schema v1's layout, as the v1 code wrote it: no cameras, no dimension names, no
    array attributes but the chunk record, every render option inside `render` as well, prose camera."""
    shutil.copytree(v2, out)
    for group in V2_ONLY:
        shutil.rmtree(out / group.split("/")[0], ignore_errors=True)  # in the copy just made
    for spec in ARRAYS:
        document = out / spec.path / "zarr.json"
        if document.exists():
            meta = json.loads(document.read_text())
            meta.pop("dimension_names", None)
            meta["attributes"] = {k: v for k, v in meta["attributes"].items() if k == "every_chunk_written_from_row"}
            document.write_text(json.dumps(meta))
    root = json.loads((out / "zarr.json").read_text())
    attrs = root["attributes"]
    attrs["schema_version"] = 1
    attrs["camera"] = {k: v for k, v in attrs["camera"].items() if k not in CAMERA_CONVENTION}
    attrs["render"] = {**attrs["render"], **{k: attrs[k] for k in ("views", "image_size", "max_points", "knn")},
                       "fov_degrees": attrs["camera"]["fov_degrees"], "margin": attrs["camera"]["margin"]}
    (out / "zarr.json").write_text(json.dumps(root))
    return out
