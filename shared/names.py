"""Names taken from data (class names, sample ids, dataset names) made safe to use: as one path component
(`path_component`, `unique_component`), and as text printed on one line (`printable`)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

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


# Cc: C0/C1 controls (NUL, ESC, newline, DEL); Cf: format characters (bidi overrides and isolates, zero-width
# spaces and joiners, BOM); Cs: lone surrogates (undecodable bytes of a file name); Zl, Zp: line separators
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(name) -> str:
    """`name` as text safe to print on one line: every control, format (bidi U+202A-U+202E, U+2066-U+2069,
    zero-width), surrogate or line-separator character becomes a Python-style escape (`\\n`, `\\x1b`,
    `\\u202e`, `\\U000e0001`); letters of any script, spaces and punctuation stay as they are.

    For names in output a terminal or a markdown viewer shows (`render info`, reports): raw, a newline or an
    ANSI sequence forges lines and a bidi override reorders them. A backslash is left alone, so applying it
    twice changes nothing (the escapes are not meant to be parsed back).
    """
    return "".join(_escape(char) if unicodedata.category(char) in _UNPRINTABLE else char for char in str(name))


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
