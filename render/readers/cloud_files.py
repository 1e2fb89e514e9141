"""PLY and PCD point clouds parsed against their own header: a file must hold exactly the points it declares.

Open3D pads a truncated binary PLY with zeros, keeps a half-read ASCII PLY, and reads a malformed or
short ASCII PCD row as whatever the row yields, without failing. So the uncompressed layouts (PLY
ascii / binary little or big endian, PCD ascii / binary) are parsed here with numpy, and the count the
header declares is compared with what the data section holds. PCD `binary_compressed` (LZF) and PLY
layouts with list properties before or inside the vertex element go to Open3D, whose point count is
then checked against the header. Every function raises `ValueError(reason)`; the caller adds the path.

ASCII data is read one row per line (blank lines skipped), as every writer we know produces it.
Binary data may be followed by less than one record of trailing bytes; a whole extra record is a
mismatch like a missing one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
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

def parse_ply(data: bytes) -> np.ndarray | None:
    """(P, 3) float64 vertex positions, or None for a layout left to Open3D (list properties before or in vertex)."""
    if not data.startswith(b"ply"):
        raise ValueError("not a PLY file (no 'ply' magic)")
    lines, offset = _header_lines(data, lambda w: w[0] == "end_header", "PLY", "end_header")
    encoding, elements = None, []  # elements: [name, count, [(property, type or None for a list)]]
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
              and words[2] in PLY_TYPES and words[3] in PLY_TYPES):
            elements[-1][2].append((words[4], None))
        else:
            raise ValueError(f"PLY header line {number} not understood: {' '.join(words)[:60]!r}")
    if encoding is None:
        raise ValueError("PLY header has no valid 'format' line")
    index = next((i for i, e in enumerate(elements) if e[0] == "vertex"), None)
    if index is None:
        raise ValueError("PLY file has no 'vertex' element")
    _, declared, properties = elements[index]
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names) or len(set(names)) != len(names):
        raise ValueError("PLY vertex element needs x, y and z properties, each once")
    if any(kind is None for e in elements[: index + 1] for _, kind in e[2]):
        return None
    last = index == len(elements) - 1
    if encoding == "ascii":
        text = data[offset:]
        cut = _nth_line_end(text, sum(e[1] for e in elements[:index]))  # rows of earlier elements come first
        table = _ascii_rows(text[cut:], len(lines) + 1 + text[:cut].count(b"\n"), declared, len(properties),
                            exact=last)
        return table[:, [names.index(axis) for axis in "xyz"]]
    order = PLY_FORMATS[encoding]
    for _, count, props in elements[:index]:
        offset += count * np.dtype([(n, order + k) for n, k in props]).itemsize
    dtype = np.dtype([(n, order + k) for n, k in properties])
    return _xyz(_binary_records(data, offset, dtype, declared, last=last), "xyz")


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

def parse_pcd(data: bytes) -> tuple[np.ndarray | None, int]:
    """((P, 3) float64 points or None for binary_compressed, left to Open3D; the declared point count)."""
    lines, offset = _header_lines(data, lambda w: w[0].upper() == "DATA", "PCD", "DATA")
    header = {w[0].upper(): w[1:] for w in lines if w and not w[0].startswith("#")}
    for key in ("FIELDS", "SIZE", "TYPE", "DATA"):
        if not header.get(key):
            raise ValueError(f"PCD header has no {key} line")
    fields, sizes, types = header["FIELDS"], header["SIZE"], header["TYPE"]
    counts = header.get("COUNT") or ["1"] * len(fields)
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise ValueError("PCD header's FIELDS, SIZE, TYPE and COUNT lines differ in length")
    if "POINTS" in header:
        declared = _count((header["POINTS"] or [""])[0], "PCD POINTS")
    elif header.get("WIDTH") and header.get("HEIGHT"):
        declared = _count(header["WIDTH"][0], "PCD WIDTH") * _count(header["HEIGHT"][0], "PCD HEIGHT")
    else:
        raise ValueError("PCD header has no POINTS line")
    layout = []
    for name, size, kind, count in zip(fields, sizes, types, counts):
        key = (kind.upper(), _count(size, f"PCD SIZE of '{name}'"))
        if key not in PCD_TYPES:
            raise ValueError(f"PCD field '{name}' has unsupported TYPE {kind} SIZE {size}")
        layout.append((name, "<" + PCD_TYPES[key], _count(count, f"PCD COUNT of '{name}'")))
    names = [name for name, _, _ in layout]
    if not {"x", "y", "z"} <= set(names) or len(set(names)) != len(names):
        raise ValueError("PCD fields need x, y and z, each once")
    if any(count != 1 for name, _, count in layout if name in "xyz"):
        raise ValueError("PCD fields x, y and z must have COUNT 1")
    kind = header["DATA"][0].lower()
    if kind == "binary_compressed":
        return None, declared
    if kind == "ascii":
        starts = np.cumsum([0] + [count for _, _, count in layout])
        table = _ascii_rows(data[offset:], len(lines) + 1, declared, int(starts[-1]), exact=True)
        return table[:, [int(starts[names.index(axis)]) for axis in "xyz"]], declared
    if kind == "binary":
        dtype = np.dtype([(n, k, (c,)) if c != 1 else (n, k) for n, k, c in layout if c])
        return _xyz(_binary_records(data, offset, dtype, declared, last=True), "xyz"), declared
    raise ValueError(f"PCD DATA {header['DATA'][0]!r} is not ascii, binary or binary_compressed")


def read_cloud(path: Path, open3d_read) -> np.ndarray:
    """(P, 3) float64 points of a .ply or .pcd file; open3d_read(path) -> (P, 3) serves the layouts left to it."""
    data = Path(path).read_bytes()
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        points, declared = parse_ply(data), None
    elif suffix == ".pcd":
        points, declared = parse_pcd(data)
    else:
        raise ValueError(f"unsupported point-cloud suffix '{Path(path).suffix}' (use .ply or .pcd)")
    if points is None:
        points = open3d_read(path)
        if declared is None:
            declared = _ply_vertex_count(data)
        if len(points) != declared:
            raise _mismatch(declared, len(points))
    if len(points) == 0:
        raise ValueError("empty point cloud (0 points)")
    return points


def _ply_vertex_count(data: bytes) -> int:
    lines, _ = _header_lines(data, lambda w: w[0] == "end_header", "PLY", "end_header")
    return next(_count(w[2], "PLY vertex count") for w in lines if w[:2] == ["element", "vertex"] and len(w) == 3)
