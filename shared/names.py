"""Names taken from data (class names, sample ids, dataset names) made safe to use as one path component."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^\w.-]+")  # \w: letters and digits of any script, and '_'
MAX_BYTES = 150                   # leaves room for suffixes within the usual 255-byte file name limit


def path_component(name, fallback: str = "unnamed") -> str:
    """One file or folder name made from `name`, never a path: runs of characters other than letters, digits,
    '.', '_' and '-' become '_' (so '/', '\\\\' and NUL never survive), leading '.' and '_' and trailing '_'
    are dropped (never '.', '..' or a hidden name), cut to MAX_BYTES of UTF-8; `fallback` if nothing is left.
    """
    text = _UNSAFE.sub("_", str(name)).lstrip("._").rstrip("_")
    while len(text.encode("utf-8")) > MAX_BYTES:
        text = text[:-1]
    return text or fallback


def unique_component(name, fallback: str = "unnamed") -> str:
    """`path_component(name)`, with '-' and 8 hex digits of the name's SHA-256 appended when it had to change,
    so two names that clean to the same text (`a/b`, `a_b`; '..', '') still get different folders."""
    text = path_component(name, fallback)
    if text == str(name):
        return text
    return f"{text}-{hashlib.sha256(str(name).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
