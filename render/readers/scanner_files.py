"""LAS/LAZ (laspy, LAZ decoded by lazrs) and E57 (pye57's libE57Format binding) clouds, as scanners write them.

The same promises as `cloud_files` makes for PLY and PCD: a file holds exactly the points its header declares,
and that count is checked against the file before anything of its size is allocated.

- LAS: the point records must fill the bytes between the header's offset to point data and the end of the
  file (or the first extended VLR); less than one record may trail them.
- LAZ: the chunk table at the end of the point data says how many points each compressed chunk holds (fixed
  chunks: the LASzip chunk size, the last one partly filled) and in how many bytes; the declared count must
  fit it, and the chunks and their bytes must fit the file, all checked before lazrs reads the table (it
  reserves memory for every chunk the table declares, and aborts the process when that fails). lazrs's
  parallel decoder then decodes each chunk from exactly its bytes, so a chunk cut short is an error; a
  header declaring fewer points than a fixed-size table's last chunk holds reads as declared.
- E57: libE57Format checks every 1 KiB page's CRC-32C and the file's length, but a scan whose `recordCount`
  declares more records than its data holds silently yields fewer; so a scan must yield exactly its count,
  and the counts times the bits each record's coordinates take at the least must fit in the file.

Every file is decoded in steps of `STEP` points (LAZ and E57 compress a point to a few bits: a small file
can honestly hold far more points than its size suggests), and a cloud declaring more than `MAX_POINTS`
is refused before it is read. Points are (P, 3) float64 in the file's own unit (LAS: scale and offset
applied; E57: each scan's pose applied, spherical coordinates converted, records flagged invalid dropped);
NaN or inf stays as read, for the preprocessing to report with a count, as for PLY. Every function raises
`ValueError(reason)`; the caller adds the path.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from ...shared.errors import first_line

STEP = 1 << 20  # points decoded per step
MAX_POINTS = 200_000_000  # a cloud above this is refused unread (4.8 GB as float64); thin such a scan first
MAX_CHUNK_BYTES = 1 << 30  # decoded bytes of one LAZ chunk (LASzip's default chunk: 50 000 points, ~2 MB)
LAS_SUFFIXES = (".las", ".laz")
E57_SUFFIXES = (".e57",)
E57_CARTESIAN = ("cartesianX", "cartesianY", "cartesianZ")
E57_SPHERICAL = ("sphericalRange", "sphericalAzimuth", "sphericalElevation")


EXTRA = "pointad-toolkit[scanners]"  # the install extra that brings laspy (with lazrs) and pye57


def _needs(package: str) -> ValueError:
    return ValueError(f"reading this file needs the '{package}' package: pip install '{EXTRA}'")


def _is_panic(exc: BaseException) -> bool:
    """A Rust panic in lazrs, raised by pyo3 as `PanicException` (a BaseException, so `except Exception` misses it)."""
    return type(exc).__name__ == "PanicException"


def _mismatch(declared: int, held: int) -> ValueError:
    return ValueError(f"declares {declared} points, holds {held}")


def _check_total(declared: int) -> None:
    if declared > MAX_POINTS:
        raise ValueError(f"declares {declared} points, more than the {MAX_POINTS} a cloud may have here; "
                         "thin the scan first (e.g. PDAL or CloudCompare)")


# --- LAS / LAZ ---------------------------------------------------------------------------------------------

def parse_las(data: bytes, dimension: str | None = None) -> np.ndarray:
    """(P, 3) float64 scaled x, y, z of a LAS or LAZ file; (P, 4) with `dimension` (a LAS dimension or
    extra-bytes name, e.g. "classification" or "anomaly") as the fourth column."""
    try:
        import laspy
    except ImportError:
        raise _needs("laspy") from None
    _check_vlr_counts(data)
    try:
        header = laspy.LasHeader.read_from(io.BytesIO(data))
    except Exception as exc:  # laspy raises LaspyException, struct errors, ValueError... for a bad header
        raise ValueError(f"not a readable LAS header ({first_line(exc)})") from None
    declared = int(header.point_count)
    _check_total(declared)
    if dimension is not None and dimension not in header.point_format.dimension_names:
        raise ValueError(f"has no point dimension '{dimension}' (it has {', '.join(header.point_format.dimension_names)})")
    if header.are_points_compressed:
        _check_chunk_table(data, header, declared)
    else:
        _check_records(data, header, declared)
    columns = []
    try:  # lazrs's parallel decoder: it decodes each chunk from exactly its bytes, so a short one is an error
        with laspy.open(io.BytesIO(data), laz_backend=laspy.LazBackend.LazrsParallel) as reader, \
                np.errstate(invalid="ignore", over="ignore"):
            for chunk in reader.chunk_iterator(STEP):
                part = [np.asarray(chunk.x, np.float64), np.asarray(chunk.y, np.float64),
                        np.asarray(chunk.z, np.float64)]
                if dimension is not None:
                    part.append(np.asarray(chunk[dimension], np.float64))
                columns.append(np.stack(part, axis=1))
    except BaseException as exc:  # lazrs: LazrsError, or a Rust panic (pyo3's PanicException is a BaseException)
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        raise ValueError(f"unreadable point data ({first_line(exc, typed=_is_panic(exc))})") from None
    points = np.concatenate(columns) if columns else np.zeros((0, 3 if dimension is None else 4))
    if len(points) != declared:
        raise _mismatch(declared, len(points))
    return points


LAS_HEADER = 227  # bytes of the smallest (1.0-1.2) public header block
VLR_HEADER, EVLR_HEADER = 54, 60  # bytes of one (extended) variable-length record's header


def _check_vlr_counts(data: bytes) -> None:
    """The header's VLR and EVLR counts against the bytes that could hold them, read before laspy reads them:
    laspy reads a count of 10^9 VLRs one empty record at a time (minutes of CPU for a 2 KB file)."""
    if len(data) < LAS_HEADER or data[:4] != b"LASF":
        return  # laspy's own refusal says why
    header_size, _, vlrs = struct.unpack_from("<HII", data, 94)
    room = max(len(data) - header_size, 0) // VLR_HEADER
    if vlrs > room:
        raise ValueError(f"header declares {vlrs} VLRs, the file has room for at most {room}")
    if data[24:26] >= bytes([1, 4]) and len(data) >= 247:
        start, evlrs = struct.unpack_from("<QI", data, 235)
        room = max(len(data) - start, 0) // EVLR_HEADER if evlrs else 0
        if evlrs > room:
            raise ValueError(f"header declares {evlrs} extended VLRs, the file has room for at most {room}")


def _check_records(data: bytes, header, declared: int) -> None:
    """Uncompressed records: exactly `declared` of them between the point offset and the end of the point data."""
    size = header.point_format.size
    offset = int(header.offset_to_point_data)
    end = len(data)
    evlr_start = int(getattr(header, "start_of_first_evlr", 0) or 0)
    if getattr(header, "number_of_evlrs", 0) and offset < evlr_start < end:
        end = evlr_start
    held = max(end - offset, 0) // size
    if held != declared:
        raise _mismatch(declared, held)


def _check_chunk_bytes(points: int, item_size: int) -> None:
    """A chunk's decoded size: lazrs reserves a whole chunk's records at once (and aborts the process when
    that fails), so a chunk of more than MAX_CHUNK_BYTES is refused (LASzip writes 50 000 points a chunk)."""
    if points * item_size > MAX_CHUNK_BYTES:
        raise ValueError(f"LAZ chunks of {points} points ({points * item_size} bytes decoded) are more than this "
                         f"reader decodes at once ({MAX_CHUNK_BYTES} bytes); recompress with smaller chunks "
                         "(LASzip's default: 50000 points)")


def _check_chunk_count(data: bytes, offset: int, item_size: int) -> None:
    """The number of chunks the LAZ chunk table's header declares, against the compressed bytes before the
    table (LASzip stores each chunk's first point raw: item_size bytes at least), before lazrs reads it: lazrs
    reserves memory for every declared chunk first, and aborts the process when that fails."""
    if len(data) < offset + 8:
        raise ValueError("point data ends before the LAZ chunk table's offset")
    (table_at,) = struct.unpack_from("<q", data, offset)
    if table_at == -1 and len(data) >= offset + 16:  # a streamed file: the offset is the file's last 8 bytes
        (table_at,) = struct.unpack_from("<q", data, len(data) - 8)
    if not offset + 8 <= table_at <= len(data) - 8:
        raise ValueError(f"LAZ chunk table offset {table_at} lies outside the point data "
                         f"({offset + 8}..{len(data) - 8})")
    _, chunks = struct.unpack_from("<II", data, table_at)
    room = (table_at - offset - 8) // max(item_size, 1)
    if chunks > room:
        raise ValueError(f"LAZ chunk table declares {chunks} chunks, its {table_at - offset - 8} compressed bytes "
                         f"hold at most {room}")


def _check_chunk_table(data: bytes, header, declared: int) -> None:
    """LAZ: the declared count against the chunk table's point counts (read before any point is decoded)."""
    import lazrs
    vlr = next((v for v in header.vlrs if type(v).__name__ == "LasZipVlr"), None)
    if vlr is None:
        raise ValueError("compressed point format without a LASzip VLR")
    try:
        laz = lazrs.LazVlr(vlr.record_data)
    except Exception as exc:
        raise ValueError(f"unreadable LASzip VLR ({first_line(exc)})") from None
    item = int(laz.item_size())
    if not laz.uses_variable_size_chunks():
        _check_chunk_bytes(int(laz.chunk_size()), item)
    _check_chunk_count(data, int(header.offset_to_point_data), item)
    try:
        source = io.BytesIO(data)
        source.seek(int(header.offset_to_point_data))
        table = lazrs.read_chunk_table(source, laz)
    except BaseException as exc:  # an unreadable table: decoding finds the file short (a Rust panic included)
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        return
    if table is None or not len(table):
        return
    counts = [int(points) for points, _ in table]
    if laz.uses_variable_size_chunks():
        _check_chunk_bytes(max(counts), int(laz.item_size()))
    held = len(data) - int(header.offset_to_point_data) - 8  # the chunks lie between the table's offset and it
    if sum(int(size) for _, size in table) > held:
        raise ValueError(f"LAZ chunk table gives its chunks {sum(int(size) for _, size in table)} bytes, the file "
                         f"holds {max(held, 0)} after the point offset")
    if laz.uses_variable_size_chunks():
        held, what = sum(counts), f"holds {sum(counts)}"
        ok = held == declared
    else:
        chunk = int(laz.chunk_size())
        ok = (len(counts) - 1) * chunk < declared <= len(counts) * chunk
        what = f"its chunk table holds {len(counts)} chunk(s) of {chunk}"
    if not ok:
        raise ValueError(f"declares {declared} points, {what}")


# --- E57 ---------------------------------------------------------------------------------------------------

def parse_e57(path: Path) -> np.ndarray:
    """(P, 3) float64 points of every 3D scan of an E57 file, scan after scan, each in file order with its
    pose applied; records whose invalid-state field is set are dropped."""
    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(8) != b"ASTM-E57":
            raise ValueError("not an E57 file (no 'ASTM-E57' signature)")
    try:
        from pye57 import libe57
    except ImportError:
        raise _needs("pye57") from None
    try:
        image = libe57.ImageFile(str(path), "r")
    except Exception as exc:  # libe57.E57Exception: bad length, checksum, XML...
        raise ValueError(f"unreadable E57 ({first_line(exc)})") from None
    try:
        scans = _e57_scans(image, libe57, path.stat().st_size)
        return np.concatenate([_e57_read(image, libe57, *scan) for scan in scans]) if scans else np.zeros((0, 3))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"unreadable E57 ({first_line(exc)})") from None
    finally:
        image.close()


def _e57_scans(image, libe57, file_size: int) -> list:
    """[(scan number, points node, coordinate fields, invalid-state field or None, pose node or None, declared
    count)], after checking the declared counts against the file."""
    root = image.root()
    if not root.isDefined("data3D"):
        raise ValueError("E57 file has no data3D section")
    data3d = libe57.VectorNode(root.get("data3D"))
    scans, declared, bits = [], 0, 0
    for number in range(data3d.childCount()):
        scan = libe57.StructureNode(data3d.get(number))
        points = libe57.CompressedVectorNode(scan.get("points"))
        prototype = libe57.StructureNode(points.prototype())
        names = {prototype.get(i).elementName() for i in range(prototype.childCount())}
        fields = next((f for f in (E57_CARTESIAN, E57_SPHERICAL) if set(f) <= names), None)
        if fields is None:
            raise ValueError(f"E57 scan {number} has neither cartesianX/Y/Z nor spherical coordinates")
        invalid = "cartesianInvalidState" if fields == E57_CARTESIAN else "sphericalInvalidState"
        invalid = invalid if invalid in names else None
        count = int(points.childCount())
        declared += count
        bits += count * sum(_e57_bits(libe57, prototype.get(f)) for f in fields)
        scans.append((number, points, fields, invalid, scan.get("pose") if scan.isDefined("pose") else None, count))
    _check_total(declared)
    if bits // 8 > file_size:
        raise ValueError(f"declares {declared} points whose coordinates take at least {bits // 8} bytes, "
                         f"the file holds {file_size}")
    return scans


def _e57_bits(libe57, node) -> int:
    """Bits one value of a prototype field takes at the least (bitpack: floats 32 or 64, integers their range)."""
    kind = node.type()
    if kind == libe57.NodeType.E57_FLOAT:
        return 64 if libe57.FloatNode(node).precision() == libe57.E57_DOUBLE else 32
    if kind == libe57.NodeType.E57_INTEGER:
        typed = libe57.IntegerNode(node)
    elif kind == libe57.NodeType.E57_SCALED_INTEGER:
        typed = libe57.ScaledIntegerNode(node)
    else:
        return 0
    return int(typed.maximum() - typed.minimum()).bit_length()


def _e57_read(image, libe57, number, points, fields, invalid, pose, declared) -> np.ndarray:
    """One scan's (n, 3) float64 points, read STEP records at a time."""
    names = [*fields, *([invalid] if invalid else [])]
    capacity = max(min(declared, STEP), 1)
    arrays = {name: np.empty(capacity, np.int8 if name == invalid else np.float64) for name in names}
    buffers = libe57.VectorSourceDestBuffer()
    for name in names:
        buffers.append(libe57.SourceDestBuffer(image, name, arrays[name], capacity, True, True))
    parts, held = [], 0
    reader = points.reader(buffers)
    try:
        while True:
            got = reader.read()
            if got == 0:
                break
            held += got
            part = np.stack([arrays[name][:got] for name in fields], axis=1)
            if invalid:
                part = part[arrays[invalid][:got] == 0]
            parts.append(part)
    finally:
        reader.close()
    if held != declared:
        raise ValueError(f"E57 scan {number} declares {declared} points, holds {held}")
    xyz = np.concatenate(parts) if parts else np.zeros((0, 3))
    with np.errstate(invalid="ignore", over="ignore"):
        if fields == E57_SPHERICAL:
            r, azimuth, elevation = xyz.T
            xyz = np.stack([r * np.cos(elevation) * np.cos(azimuth), r * np.cos(elevation) * np.sin(azimuth),
                            r * np.sin(elevation)], axis=1)
        if pose is not None:
            rotation, translation = _e57_pose(libe57, libe57.StructureNode(pose))
            xyz = xyz @ rotation.T + translation
    return xyz


def _e57_pose(libe57, pose) -> tuple[np.ndarray, np.ndarray]:
    """(3 x 3 rotation, (3,) translation) of a scan's pose (unit quaternion w, x, y, z; identity where absent)."""
    def values(name, keys, default):
        if not pose.isDefined(name):
            return np.array(default, np.float64)
        node = libe57.StructureNode(pose.get(name))
        return np.array([libe57.FloatNode(node.get(k)).value() if node.isDefined(k) else d
                         for k, d in zip(keys, default)], np.float64)
    w, x, y, z = values("rotation", ("w", "x", "y", "z"), (1.0, 0.0, 0.0, 0.0))
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("E57 scan pose has a zero or non-finite rotation quaternion")
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return rotation, values("translation", ("x", "y", "z"), (0.0, 0.0, 0.0))
