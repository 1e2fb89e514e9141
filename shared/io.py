"""Atomic outputs: written under a temporary name beside the target, then renamed; our temp folders
carry the writer's host and pid, so a later run can tell a dead writer's leftovers from a live one's.

No symlink is followed into deleting or changing what it points to: a temp name that is a symlink is never
removed, `shutil.rmtree` removes a link found inside a folder without entering it, and an output whose name
is a symlink has the link replaced by the new file, its target left as it was."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import PointADError


def os_error(exc: OSError, path) -> PointADError:
    """One-line error for an OSError met while writing `path`: the file it names (else `path`) and why.

    E.g. `renders.zarr: No space left on device` for ENOSPC, `out.png: Is a directory` for EISDIR.
    """
    where = exc.filename if exc.filename is not None else path
    return PointADError(f"{where}: {exc.strerror or exc}")


def temp_sibling(path) -> Path:
    """`.<name>.tmp-<host>-<pid>` beside `path`: where this process builds `path` before renaming it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    """True if process `pid` exists on this host and is not a zombie (a killed child nobody reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the pid exists
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def stale_temp_siblings(path) -> list[Path]:
    """Temp folders of `path` (`temp_sibling` names, or `.<name>.tmp-<pid>` of older versions) left by a
    writer on this host that is dead, or by this very process: provably ours and nobody's in use."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(?:{re.escape(socket.gethostname())}-)?(\d+)")
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return []
    stale = []
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None or candidate.is_symlink() or not candidate.is_dir():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or not _pid_alive(pid):
            stale.append(candidate)
    return sorted(stale)


def remove_stale_temp_siblings(path) -> list[Path]:
    """Delete what `stale_temp_siblings` finds; return the folders removed.

    rmtree's fd-based walk (Linux: `shutil.rmtree.avoids_symlink_attacks`) refuses a folder swapped for a
    symlink after the check, and unlinks a symlink inside a folder without following it."""
    stale = stale_temp_siblings(path)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _umask() -> int:
    """The process's umask, read without changing it: os.umask(0) and back would leave a window in which
    another thread (the report's pools) creates files with umask 0. Linux says it in /proc; elsewhere the
    value read once at import."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _umask_at_import() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_at_import()


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path in the target's folder; rename it to `path` only if the block succeeds (a
    symlink named `path` is replaced, never written through)."""
    path = Path(path)
    if path.is_dir():
        raise PointADError(f"{path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            raise PointADError(f"{path.parent}: is not a folder, cannot write {path.name} into it") from None
        raise os_error(exc, path) from None
    # mkstemp makes 0600; outputs get the usual permissions. By descriptor: a name could meanwhile be a symlink
    os.fchmod(handle, 0o666 & ~_umask())
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_png(path: Path, image: np.ndarray) -> None:
    """Save an (H, W[, 3]) uint8 array as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
