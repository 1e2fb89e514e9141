"""PLY and PCD point clouds parsed against their own header: a file must hold exactly the points it declares.

Open3D pads a truncated binary PLY with zeros, keeps a half-read ASCII PLY, reads a malformed or short
ASCII PCD row as whatever the row yields, allocates whatever count a header declares, and trusts a
binary_compressed PCD's header so far that one declaring more points than its data holds crashes the
process (it reads past its buffer). So no cloud file reaches it: every PLY layout (ascii, binary little
or big endian, list properties anywhere) and every PCD layout (ascii, binary, binary_compressed: LZF,
`readers.lzf`) is parsed here with numpy, and the count the header declares is compared with what the
data section holds before anything of that size is allocated. Every function raises `ValueError(reason)`;
the caller adds the path.

ASCII data is read one row per line (blank lines skipped), as every writer we know produces it.
Binary data may be followed by less than one record of trailing bytes; a whole extra record is a
mismatch like a missing one. A binary_compressed section holds exactly the bytes its two size fields
declare (what follows them is ignored), and a PCD's WIDTH x HEIGHT must equal its POINTS. PLY records
with list properties vary in length and are walked one by one in Python (about a microsecond per
property: seconds for a million vertices; such files are rare, faces usually follow the vertices).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np

from .lzf import LZF_MAX_RATIO, lzf_decompress
from .scanner_files import E57_SUFFIXES, LAS_SUFFIXES, parse_e57, parse_las

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "f4": "f", "f8": "d"}
PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
             ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}
MAX_HEADER = 1 << 16  # bytes; a header is a few hundred


def _mismatch(declared: int, held: int) -> ValueError:
    return ValueError(f"declares {declared} points, holds {held}")


def _header_lines(data: bytes, is_last, what: str, last_line: str) -> tuple[list[list[str]], int]:
    """(words of each header line, offset of the data section); is_last(words) marks the final line."""
    lines, offset = [], 0
    while True:
        end = data.find(b"\n", offset, MAX_HEADER)
        if end < 0:
            raise ValueError(f"not a {what} file (no '{last_line}' line ends a header)")
        try:
            words = data[offset:end].decode("ascii").split()
        except UnicodeDecodeError:
            raise ValueError(f"{what} header line {len(lines) + 1} is not ASCII text") from None
        lines.append(words)
        offset = end + 1
        if words and is_last(words):
            return lines, offset


def _count(word: str, what: str) -> int:
    try:
        value = int(word)
    except ValueError:
        raise ValueError(f"{what} is not a count: {word!r}") from None
    if value < 0:
        raise ValueError(f"{what} is negative: {value}")
    return value


def _ascii_rows(text: bytes, first_line: int, n_rows: int, n_values: int, *, exact: bool) -> np.ndarray:
    """(n_rows, n_values) float64 from the first n_rows non-blank lines of `text`; line numbers count from first_line."""
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"data section is not ASCII text (byte {exc.start})") from None
    rows = [line for line in lines if line.strip()]
    if len(rows) < n_rows or (exact and len(rows) > n_rows):
        raise _mismatch(n_rows, len(rows))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(rows[:n_rows], dtype=np.float64, ndmin=2, comments=None)
        if table.shape == (n_rows, n_values):
            return table
    except ValueError:
        pass
    raise _malformed_row(lines, first_line, n_values)


def _malformed_row(lines: list[str], first_line: int, n_values: int) -> ValueError:
    """The error for the first row numpy could not read, found the slow way (only on failure)."""
    for number, line in enumerate(lines, start=first_line):
        words = line.split()
        if words and len(words) != n_values:
            return ValueError(f"line {number}: malformed row ({len(words)} values, the header declares {n_values})")
        for word in words:
            try:
                float(word)
            except ValueError:
                return ValueError(f"line {number}: malformed row, {word[:20]!r} is not a number")
    return ValueError("malformed data section")


def _binary_records(data: bytes, offset: int, dtype: np.dtype, declared: int, *, last: bool) -> np.ndarray:
    """`declared` records of `dtype` starting at `offset`, after checking the data section holds them."""
    available = len(data) - offset
    held = max(available, 0) // dtype.itemsize
    if held < declared or (last and held > declared):
        raise _mismatch(declared, held)
    return np.frombuffer(data, dtype, count=declared, offset=offset)


def _xyz(records: np.ndarray, names) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN stays NaN, reported by the preprocessing with a count
        return np.stack([records[n].astype(np.float64) for n in names], axis=1)


# --- PLY ------------------------------------------------------------------------------------------------

def parse_ply(data: bytes, extra: str | None = None) -> np.ndarray:
    """(P, 3) float64 vertex positions of a PLY file: ascii or binary, list properties anywhere; (P, 4) with
    the scalar vertex property `extra` (e.g. a per-point label) as the fourth column."""
    if not data.startswith(b"ply"):
        raise ValueError("not a PLY file (no 'ply' magic)")
    lines, offset = _header_lines(data, lambda w: w[0] == "end_header", "PLY", "end_header")
    encoding, elements = _ply_header(lines)
    index = next((i for i, e in enumerate(elements) if e[0] == "vertex"), None)
    if index is None:
        raise ValueError("PLY file has no 'vertex' element")
    _, declared, properties = elements[index]
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names) or len(set(names)) != len(names):
        raise ValueError("PLY vertex element needs x, y and z properties, each once")
    if extra is not None and extra not in names:
        raise ValueError(f"PLY vertex element has no property '{extra}' (it has {', '.join(names)})")
    keep = ("x", "y", "z") if extra is None else ("x", "y", "z", extra)
    if any(_is_list(kind) for name, kind in properties if name in keep):
        raise ValueError(f"PLY vertex properties {', '.join(keep)} must not be lists")
    last = index == len(elements) - 1
    if encoding == "ascii":
        text = data[offset:]
        cut = _nth_line_end(text, sum(e[1] for e in elements[:index]))  # rows of earlier elements come first
        first_line = len(lines) + 1 + text[:cut].count(b"\n")
        if any(_is_list(kind) for _, kind in properties):
            return _ascii_list_rows(text[cut:], first_line, declared, properties, keep, exact=last)
        table = _ascii_rows(text[cut:], first_line, declared, len(properties), exact=last)
        return table[:, [names.index(name) for name in keep]]
    order = PLY_FORMATS[encoding]
    for element in elements[:index]:
        offset = _binary_walk(data, offset, element, order)[0]
    if any(_is_list(kind) for _, kind in properties):
        end, points = _binary_walk(data, offset, elements[index], order, keep=keep)
        if last and len(data) - end >= _smallest_record(properties, order):
            raise ValueError(f"declares {declared} points, {len(data) - end} bytes follow them")
        return points
    dtype = np.dtype([(n, order + k) for n, k in properties])
    return _xyz(_binary_records(data, offset, dtype, declared, last=last), keep)


def _ply_header(lines) -> tuple[str, list]:
    """(encoding, elements [name, count, [(property, type, or (count type, item type) for a list)]])."""
    encoding, elements = None, []
    for number, words in enumerate(lines[1:-1], start=2):
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) == 3 and words[1] in PLY_FORMATS:
            encoding = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append([words[1], _count(words[2], f"PLY element '{words[1]}' count"), []])
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in PLY_TYPES:
            elements[-1][2].append((words[2], PLY_TYPES[words[1]]))
        elif (words[0] == "property" and elements and len(words) == 5 and words[1] == "list"
              and words[2] in PLY_TYPES and words[3] in PLY_TYPES and PLY_TYPES[words[2]][0] in "iu"):
            elements[-1][2].append((words[4], (PLY_TYPES[words[2]], PLY_TYPES[words[3]])))
        else:
            raise ValueError(f"PLY header line {number} not understood: {' '.join(words)[:60]!r}")
    if encoding is None:
        raise ValueError("PLY header has no valid 'format' line")
    return encoding, elements


def _is_list(kind) -> bool:
    return isinstance(kind, tuple)


def _smallest_record(properties, order: str) -> int:
    """Bytes of a binary record whose lists are all empty."""
    return sum(np.dtype(order + (kind[0] if _is_list(kind) else kind)).itemsize for _, kind in properties)


def _rows_short(name: str, declared: int, held: str) -> ValueError:
    if name == "vertex":
        return ValueError(f"declares {declared} points, {held}")
    return ValueError(f"PLY element '{name}' declares {declared} rows, {held}")


def _binary_walk(data: bytes, offset: int, element, order: str, keep=()) -> tuple[int, np.ndarray]:
    """(offset past the element's records, (count, len(keep)) float64 of its `keep` scalar properties).

    Records with list properties vary in length, so they are walked one by one (about a microsecond per
    property), after checking the data can hold the declared count of records with empty lists."""
    name, count, properties = element
    if not any(_is_list(kind) for _, kind in properties):
        size = np.dtype([(n, order + k) for n, k in properties]).itemsize
        return offset + count * size, np.empty((0, len(keep)))
    available = max(len(data) - offset, 0)
    smallest = _smallest_record(properties, order)
    if count * smallest > available:
        raise _rows_short(name, count, f"its {available} data bytes hold at most {available // smallest}")
    steps = [(struct.Struct(order + STRUCT_CODES[kind[0] if _is_list(kind) else kind]),
              np.dtype(kind[1]).itemsize if _is_list(kind) else None, keep.index(n) if n in keep else None)
             for n, kind in properties]
    out = np.empty((count, len(keep)))
    for row in range(count):
        for step, item_size, column in steps:
            try:
                (value,) = step.unpack_from(data, offset)
            except struct.error:
                raise _rows_short(name, count, f"holds {row}") from None
            offset += step.size
            if item_size is not None:
                if value < 0:
                    raise ValueError(f"PLY element '{name}' row {row + 1}: negative list length {value}")
                offset += value * item_size
            elif column is not None:
                out[row, column] = value
    if offset > len(data):  # the last record's list runs past the end
        raise _rows_short(name, count, f"holds {count - 1}")
    return offset, out


def _ascii_list_rows(text: bytes, first_line: int, declared: int, properties, keep=("x", "y", "z"), *,
                     exact: bool) -> np.ndarray:
    """(declared, len(keep)) float64 of the `keep` properties of ASCII vertex rows with list properties, walked
    row by row (a list is its length, then that many values)."""
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"data section is not ASCII text (byte {exc.start})") from None
    rows = [(number, line.split()) for number, line in enumerate(lines, start=first_line) if line.strip()]
    if len(rows) < declared or (exact and len(rows) > declared):
        raise _mismatch(declared, len(rows))
    out = np.empty((declared, len(keep)))
    for row, (number, words) in enumerate(rows[:declared]):
        at = 0
        for name, kind in properties:
            try:
                if _is_list(kind):
                    at += 1 + _count(words[at], "list length")
                else:
                    if name in keep:
                        out[row, keep.index(name)] = float(words[at])
                    at += 1
            except IndexError:
                raise ValueError(f"line {number}: malformed row ({len(words)} values, fewer than its properties "
                                 "take)") from None
            except ValueError as exc:
                raise ValueError(f"line {number}: malformed row, {str(exc)[:60]}") from None
        if at != len(words):
            raise ValueError(f"line {number}: malformed row ({len(words)} values, its properties take {at})")
    return out


def _nth_line_end(text: bytes, n: int) -> int:
    """Offset just past the n-th non-blank line of text."""
    offset, seen = 0, 0
    while seen < n:
        end = text.find(b"\n", offset)
        if end < 0:
            raise ValueError("data section ends before the vertex rows")
        if text[offset:end].strip():
            seen += 1
        offset = end + 1
    return offset


# --- PCD ------------------------------------------------------------------------------------------------

def parse_pcd(data: bytes) -> np.ndarray:
    """(P, 3) float64 points of a PCD file: DATA ascii, binary or binary_compressed."""
    lines, offset = _header_lines(data, lambda w: w[0].upper() == "DATA", "PCD", "DATA")
    header = {w[0].upper(): w[1:] for w in lines if w and not w[0].startswith("#")}
    for key in ("FIELDS", "SIZE", "TYPE", "DATA"):
        if not header.get(key):
            raise ValueError(f"PCD header has no {key} line")
    declared, layout = _pcd_points(header), _pcd_layout(header)
    kind = header["DATA"][0].lower()
    if kind == "ascii":
        starts = dict(zip(layout, np.cumsum([0] + [count for _, _, count, _ in layout])))
        table = _ascii_rows(data[offset:], len(lines) + 1, declared, sum(count for _, _, count, _ in layout),
                            exact=True)
        return table[:, [int(starts[field]) for field in _xyz_fields(layout)]]
    if kind == "binary":
        return _pcd_binary(data, offset, layout, declared)
    if kind == "binary_compressed":
        return _pcd_compressed(data, offset, layout, declared)
    raise ValueError(f"PCD DATA {header['DATA'][0]!r} is not ascii, binary or binary_compressed")


def _pcd_points(header: dict) -> int:
    """The point count the header declares: POINTS (else WIDTH x HEIGHT), equal to WIDTH x HEIGHT where given."""
    width = _count(header["WIDTH"][0], "PCD WIDTH") if header.get("WIDTH") else None
    height = _count(header["HEIGHT"][0], "PCD HEIGHT") if header.get("HEIGHT") else None
    if "POINTS" in header:
        declared = _count((header["POINTS"] or [""])[0], "PCD POINTS")
    elif width is not None and height is not None:
        declared = width * height
    else:
        raise ValueError("PCD header has no POINTS line")
    if width is not None and height is not None and width * height != declared:
        raise ValueError(f"PCD header declares POINTS {declared} but WIDTH {width} x HEIGHT {height}")
    return declared


def _pcd_layout(header: dict) -> list[tuple[str, str, int, int]]:
    """(name, numpy type, COUNT, byte offset in a point's record) per field; x, y and z each once, COUNT 1."""
    fields, sizes, types = header["FIELDS"], header["SIZE"], header["TYPE"]
    counts = header.get("COUNT") or ["1"] * len(fields)
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise ValueError("PCD header's FIELDS, SIZE, TYPE and COUNT lines differ in length")
    layout, start = [], 0
    for name, size, kind, count in zip(fields, sizes, types, counts):
        key = (kind.upper(), _count(size, f"PCD SIZE of '{name}'"))
        if key not in PCD_TYPES:
            raise ValueError(f"PCD field '{name}' has unsupported TYPE {kind} SIZE {size}")
        count = _count(count, f"PCD COUNT of '{name}'")
        layout.append((name, "<" + PCD_TYPES[key], count, start))
        start += key[1] * count
    names = [name for name, _, _, _ in layout]
    if not {"x", "y", "z"} <= set(names) or len(set(names)) != len(names):
        raise ValueError("PCD fields need x, y and z, each once")
    if any(count != 1 for _, _, count, _ in _xyz_fields(layout)):
        raise ValueError("PCD fields x, y and z must have COUNT 1")
    return layout


def _xyz_fields(layout) -> list[tuple[str, str, int, int]]:
    return [next(field for field in layout if field[0] == axis) for axis in "xyz"]


def _record_size(layout) -> int:
    return sum(np.dtype(kind).itemsize * count for _, kind, count, _ in layout)


def _stacked(columns) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN stays NaN, reported by the preprocessing with a count
        return np.stack([column.astype(np.float64) for column in columns], axis=1)


def _pcd_binary(data: bytes, offset: int, layout, declared: int) -> np.ndarray:
    """Points of a binary data section: one record per point, less than one record may trail them."""
    row = _record_size(layout)
    held = max(len(data) - offset, 0) // row
    if held != declared:
        raise _mismatch(declared, held)
    if declared == 0:
        return np.zeros((0, 3))
    return _stacked(np.ndarray((declared,), kind, data, offset + start, (row,))
                    for _, kind, _, start in _xyz_fields(layout))


def _pcd_compressed(data: bytes, offset: int, layout, declared: int) -> np.ndarray:
    """Points of a binary_compressed data section: uint32 compressed and uncompressed sizes (little-endian),
    then an LZF stream of each field's values for all points, field after field (PCL's layout).

    Both sizes are checked against the header and the file before anything is allocated: Open3D trusts
    them and reads past its buffer (a segfault) when POINTS promises more than the stream holds."""
    if len(data) - offset < 8:
        raise ValueError("binary_compressed data section ends before its two size fields")
    compressed, uncompressed = (int(size) for size in np.frombuffer(data, "<u4", 2, offset))
    expected = declared * _record_size(layout)
    if uncompressed != expected:
        raise ValueError(f"declares {declared} points ({expected} bytes), its compressed data unpacks to "
                         f"{uncompressed} bytes")
    available = len(data) - offset - 8
    if compressed > available:
        raise ValueError(f"declares {declared} points in {compressed} compressed bytes, the file holds {available}")
    if uncompressed > LZF_MAX_RATIO * compressed:
        raise ValueError(f"{compressed} compressed bytes cannot hold the {uncompressed} bytes declared")
    raw = lzf_decompress(data[offset + 8:offset + 8 + compressed], uncompressed)
    if declared == 0:
        return np.zeros((0, 3))
    # the blocks of the fields before it come first: a field's block starts at declared x its record offset
    return _stacked(np.ndarray((declared,), kind, raw, declared * start) for _, kind, _, start in _xyz_fields(layout))


CLOUD_SUFFIXES = (".ply", ".pcd", *LAS_SUFFIXES, *E57_SUFFIXES)


def read_cloud(path: Path, extra: str | None = None) -> np.ndarray:
    """(P, 3) float64 points of a .ply, .pcd, .las, .laz or .e57 file (the last three: `scanner_files`);
    (P, 4) with the named per-point property as the fourth column (a PLY vertex property, a LAS dimension)."""
    suffix = Path(path).suffix.lower()
    if suffix not in CLOUD_SUFFIXES:
        raise ValueError(f"unsupported point-cloud suffix '{Path(path).suffix}' (use {', '.join(CLOUD_SUFFIXES)})")
    if extra is not None and suffix not in (".ply", *LAS_SUFFIXES):
        raise ValueError(f"a {suffix} file carries no per-point property '{extra}' here (only .ply and .las/.laz)")
    if suffix in E57_SUFFIXES:
        points = parse_e57(Path(path))
    else:
        data = Path(path).read_bytes()
        if suffix == ".pcd":
            points = parse_pcd(data)
        elif suffix == ".ply":
            points = parse_ply(data, extra)
        else:
            points = parse_las(data, extra)
    if len(points) == 0:
        raise ValueError("empty point cloud (0 points)")
    return points
