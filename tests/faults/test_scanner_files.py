"""LAS, LAZ and E57 files that lie or are damaged (issue 20 item 2): one line naming the file, never a crash.

Files are written by laspy (LAZ through lazrs) and pye57 themselves, then cut, bit-flipped, or crafted: a
header's point count changed (LAS), or an E57 scan's recordCount rewritten in its XML with every 1 KiB
page's CRC-32C recomputed, so that libE57Format accepts the file and only our check stands between the
claim and the allocation. Reading happens in child processes under a heap limit and a timeout (as in
test_tampered_files): a crash, a hang or an allocation the claim asks for fails the test instead of the run.
Each hostile file is first shown to be armed: the library's own whole-file reader allocates what it claims.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA_LIMIT = 3 * 2**30  # bytes of heap a child may take (reading these files takes well under 1 GB)
COUNT = 200
POINTS = np.random.default_rng(21).random((COUNT, 3)) * 100
MAX = 200_000_000  # render.readers.scanner_files.MAX_POINTS

# each file given: its points read and preprocessed as a folder dataset's cloud; one line each, the count or error
READ_EACH = """
import sys
from pathlib import Path
import numpy as np
from pointad.render.preprocess import PreprocessOptions, preprocess_unorganized
from pointad.render.readers.files import read_point_cloud
from pointad.shared.errors import PointADError
options = PreprocessOptions(background="none", flip=False, min_points=1)
for name in sys.argv[1:]:
    try:
        points = read_point_cloud(Path(name))
        try:
            print(len(preprocess_unorganized(points, np.zeros(len(points), np.uint8), options)[0]))
        except ValueError as exc:
            print(f"{name}: {exc}")
    except PointADError as exc:
        print(exc)
"""


def child(code: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


# --- writing the files ---------------------------------------------------------------------------------------

def write_las(path: Path, version: str = "1.2", point_format: int = 0, points=POINTS) -> bytes:
    import laspy
    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = [1e-4] * 3
    las = laspy.LasData(header)
    las.x, las.y, las.z = points.T
    las.write(str(path), do_compress=path.suffix == ".laz")
    return path.read_bytes()


def write_e57(path: Path, points=POINTS) -> bytes:
    import pye57
    with pye57.E57(str(path), mode="w") as e57:
        e57.write_scan_raw({"cartesianX": points[:, 0], "cartesianY": points[:, 1], "cartesianZ": points[:, 2]})
    return path.read_bytes()


def las_count(data: bytes, count: int) -> bytes:
    """The LAS with its header's point count replaced (1.4: the 64-bit count; else the legacy 32-bit one)."""
    out = bytearray(data)
    if data[24:26] == bytes([1, 4]):
        out[247:255] = struct.pack("<Q", count)
    else:
        out[107:111] = struct.pack("<I", count)
    return bytes(out)


def laz_chunk_bytes(data: bytes, size: int) -> bytes:
    """The LAZ with its one chunk's byte count in the chunk table replaced (the table: the uint64 at the point
    offset gives its place; version and count as uint32, then the arithmetic-coded entries), written again by
    lazrs itself."""
    import io

    import lazrs
    offset = struct.unpack_from("<I", data, 96)[0]
    table_at = struct.unpack_from("<q", data, offset)[0]
    vlr_at = data.index(b"laszip encoded") - 2  # the LASzip VLR's header starts with 2 reserved bytes
    record = data[vlr_at + 54:vlr_at + 54 + struct.unpack_from("<H", data, vlr_at + 20)[0]]
    out = io.BytesIO()
    lazrs.write_chunk_table(out, [(COUNT, size)], lazrs.LazVlr(record))
    return data[:table_at] + out.getvalue()


def laz_table_at(data: bytes) -> int:
    return struct.unpack_from("<q", data, struct.unpack_from("<I", data, 96)[0])[0]


def laz_chunk_count(data: bytes, chunks: int) -> bytes:
    """The LAZ with its chunk table's number of chunks replaced (lazrs reserves memory for that many first,
    and aborts the process when it cannot: 2^32 - 1 chunks of 16 bytes are 64 GiB)."""
    out = bytearray(data)
    struct.pack_into("<I", out, laz_table_at(data) + 4, chunks)
    return bytes(out)


def laz_chunk_size(data: bytes, points: int) -> bytes:
    """The LAZ with the LASzip VLR's chunk size replaced (lazrs reserves a whole chunk's records at once)."""
    out = bytearray(data)
    struct.pack_into("<I", out, data.index(b"laszip encoded") - 2 + 54 + 12, points)
    return bytes(out)


def las_scale(data: bytes, value: float) -> bytes:
    out = bytearray(data)
    out[131:139] = struct.pack("<d", value)  # x scale factor
    return bytes(out)


# E57 pages: 1020 bytes of data, then their CRC-32C (Castagnoli), big-endian
PAGE, PAYLOAD = 1024, 1020


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def logical(data: bytes) -> bytes:
    return b"".join(data[i:i + PAYLOAD] for i in range(0, len(data), PAGE))


def paged(stream: bytes) -> bytes:
    pages = []
    for start in range(0, len(stream), PAYLOAD):
        chunk = stream[start:start + PAYLOAD].ljust(PAYLOAD, b"\0")
        pages.append(chunk + struct.pack(">I", crc32c(chunk)))
    return b"".join(pages)


def e57_edited(data: bytes, *, xml=None, values=None) -> bytes:
    """The E57 with its XML section passed through `xml` (the file header's lengths follow) and/or float32
    values replaced ({old: new}, in the binary section), every page's checksum recomputed."""
    stream = bytearray(logical(data))
    signature, major, minor, _, xml_offset, xml_length, page = struct.unpack("<8sIIQQQQ", stream[:48])
    for old, new in (values or {}).items():
        at = bytes(stream).index(np.float32(old).tobytes(), 48)
        stream[at:at + 4] = np.float32(new).tobytes()
    xml_at = xml_offset // PAGE * PAYLOAD + xml_offset % PAGE
    text = bytes(stream[xml_at:xml_at + xml_length])
    text = xml(text) if xml else text
    body = bytes(stream[48:xml_at]) + text
    pages = -(-(48 + len(body)) // PAYLOAD)
    head = struct.pack("<8sIIQQQQ", signature, major, minor, pages * PAGE, xml_offset, len(text), page)
    return paged(head + body)


def record_count(count: int):
    return lambda text: text.replace(f'recordCount="{COUNT}"'.encode(), f'recordCount="{count}"'.encode())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("scanner")
    return {"las": write_las(folder / "a.las"), "las14": write_las(folder / "b.las", "1.4", 6),
            "laz": write_las(folder / "a.laz"), "e57": write_e57(folder / "a.e57")}


def test_the_e57_page_writer_is_a_twin_of_libe57s(written):
    """Re-paging a file pye57 wrote gives its bytes back: our checksums are libE57Format's (the crafted files
    are read below, `e57 rewritten`, to show a rewritten file is one libE57Format accepts)."""
    assert paged(logical(written["e57"])) == written["e57"]


# --- crafted and damaged files ---------------------------------------------------------------------------------

def _cases(written: dict[str, bytes]) -> list[tuple[str, str, bytes, str]]:
    """(name, suffix, bytes, what reading prints: a count, or the reason after the path; '~' = a prefix)."""
    las, las14, laz, e57 = written["las"], written["las14"], written["laz"], written["e57"]
    e57_size = len(e57)
    return [
        ("las pristine", ".las", las, str(COUNT)),
        ("las claims 10^8", ".las", las_count(las, 10**8), f"declares 100000000 points, holds {COUNT}"),
        ("las claims one more", ".las", las_count(las, COUNT + 1), f"declares {COUNT + 1} points, holds {COUNT}"),
        ("las claims one less", ".las", las_count(las, COUNT - 1), f"declares {COUNT - 1} points, holds {COUNT}"),
        ("las claims 4x10^9", ".las", las_count(las, 4 * 10**9),
         f"declares 4000000000 points, more than the {MAX} a cloud may have here; thin the scan first (e.g. PDAL or "
         "CloudCompare)"),
        ("las cut in a record", ".las", las[:-7], f"declares {COUNT} points, holds {COUNT - 1}"),
        ("las cut in the header", ".las", las[:100], "not a readable LAS header (File is to small to be a valid LAS)"),
        ("las NaN scale", ".las", las_scale(las, float("nan")), f"non-finite coordinates in {COUNT} point(s)"),
        ("las inf scale", ".las", las_scale(las, float("inf")), "~non-finite coordinates in "),
        ("las 1.4 claims 10^8", ".las", las_count(las14, 10**8), f"declares 100000000 points, holds {COUNT}"),
        ("las 1.4 claims 10^15", ".las", las_count(las14, 10**15),
         f"declares 1000000000000000 points, more than the {MAX} a cloud may have here; thin the scan first (e.g. "
         "PDAL or CloudCompare)"),
        ("laz pristine", ".laz", laz, str(COUNT)),
        ("laz claims 10^8", ".laz", las_count(laz, 10**8),
         "declares 100000000 points, its chunk table holds 1 chunk(s) of 50000"),
        ("laz claims one more", ".laz", las_count(laz, COUNT + 1),
         "unreadable point data (IoError: failed to fill whole buffer)"),
        ("laz cut", ".laz", laz[:len(laz) // 2],
         f"LAZ chunk table offset {laz_table_at(laz)} lies outside the point data "
         f"({struct.unpack_from('<I', laz, 96)[0] + 8}..{len(laz) // 2 - 8})"),
        ("laz chunk of 2^64 bytes", ".laz", laz_chunk_bytes(laz, 2**64 - 1),
         f"LAZ chunk table gives its chunks {2**64 - 1} bytes, the file holds "
         f"{len(laz_chunk_bytes(laz, 2**64 - 1)) - struct.unpack_from('<I', laz, 96)[0] - 8} after the point offset"),
        ("laz 2^32 - 1 chunks", ".laz", laz_chunk_count(laz, 2**32 - 1),
         f"LAZ chunk table declares {2**32 - 1} chunks, its {laz_table_at(laz) - struct.unpack_from('<I', laz, 96)[0] - 8}"
         f" compressed bytes hold at most {(laz_table_at(laz) - struct.unpack_from('<I', laz, 96)[0] - 8) // 20}"),
        ("laz chunks of 2^31 points", ".laz", laz_chunk_size(laz, 2**31),
         f"LAZ chunks of {2**31} points ({2**31 * 20} bytes decoded) are more than this reader decodes at once "
         f"({2**30} bytes); recompress with smaller chunks (LASzip's default: 50000 points)"),
        ("las 10^9 VLRs", ".las", las[:100] + struct.pack("<I", 10**9) + las[104:],
         f"header declares 1000000000 VLRs, the file has room for at most {(len(las) - 227) // 54}"),
        ("e57 pristine", ".e57", e57, str(COUNT)),
        ("e57 rewritten", ".e57", e57_edited(e57), str(COUNT)),
        ("e57 claims one more", ".e57", e57_edited(e57, xml=record_count(COUNT + 1)),
         f"E57 scan 0 declares {COUNT + 1} points, holds {COUNT}"),
        ("e57 claims 10^8", ".e57", e57_edited(e57, xml=record_count(10**8)),
         f"declares 100000000 points whose coordinates take at least 1200000000 bytes, the file holds {e57_size}"),
        ("e57 claims 10^12", ".e57", e57_edited(e57, xml=record_count(10**12)),
         f"declares 1000000000000 points, more than the {MAX} a cloud may have here; thin the scan first (e.g. "
         "PDAL or CloudCompare)"),
        ("e57 NaN and inf", ".e57", e57_edited(e57, values={POINTS[0, 0]: np.nan, POINTS[3, 1]: np.inf}),
         "non-finite coordinates in 2 point(s)"),
        ("e57 cut", ".e57", e57[:-100], "unreadable E57 (size in file header not same as actual (ErrorBadFileLength))"),
        ("e57 bit flipped", ".e57", e57[:500] + bytes([e57[500] ^ 0xFF]) + e57[501:],
         "~unreadable E57 (checksum mismatch, file is corrupted (ErrorBadChecksum))"),
        ("e57 signature", ".e57", b"ASTM-E58" + e57[8:], "not an E57 file (no 'ASTM-E57' signature)"),
    ]


@pytest.mark.slow
def test_crafted_and_damaged_files_are_one_line_each_never_a_crash(written, tmp_path):
    cases = _cases(written)
    paths = []
    for number, (_, suffix, data, _) in enumerate(cases):
        paths.append(tmp_path / f"case{number}{suffix}")
        paths[-1].write_bytes(data)
    result = child(READ_EACH, *paths, cwd=tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    lines = result.stdout.splitlines()
    assert len(lines) == len(cases), result.stdout
    for line, path, (name, _, _, expected) in zip(lines, paths, cases):
        if expected.isdigit():
            assert line == expected, (name, line)
        elif expected.startswith("~"):
            assert line.startswith(f"{path}: {expected[1:]}"), (name, line)
        else:
            assert line == f"{path}: {expected}", (name, line)


def test_the_crafted_files_are_armed(written, tmp_path):
    """Not our code: the libraries' whole-file readers allocate what the file claims (pye57: 10^12 doubles
    per coordinate; laspy and lazrs: 2^32 - 1 chunk table entries), which the heap limit refuses: a
    MemoryError, or lazrs aborting the whole process."""
    e57, laz = tmp_path / "claims.e57", tmp_path / "claims.laz"
    e57.write_bytes(e57_edited(written["e57"], xml=record_count(10**12)))
    laz.write_bytes(laz_chunk_count(written["laz"], 2**32 - 1))
    code = ("import sys, pye57, laspy\n"
            "for read in (lambda: pye57.E57(sys.argv[1]).read_scan_raw(0), lambda: laspy.read(sys.argv[2])):\n"
            "    try:\n        read()\n        print('read')\n"
            "    except MemoryError as exc:\n        print('MemoryError')\n"
            "    except Exception as exc:\n        print(type(exc).__name__)\n")
    result = child(code, e57, laz, cwd=tmp_path)
    assert result.stdout.split()[:1] == ["MemoryError"], (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.returncode < 0 or result.stdout.split()[1:] == ["MemoryError"], \
        (result.returncode, result.stdout, result.stderr[-2000:])


# --- fuzzing, in a child process ------------------------------------------------------------------------------

FUZZ = """
import sys
from pathlib import Path
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from pointad.render.readers.files import read_point_cloud
from pointad.shared.errors import PointADError

source, copy = Path(sys.argv[1]), Path(sys.argv[2])
pristine = source.read_bytes()

@st.composite
def edits(draw):
    near_start = st.integers(0, min(len(pristine), 600))
    anywhere = st.integers(0, len(pristine))
    if draw(st.booleans()):
        return (("cut", draw(st.one_of(near_start, anywhere)), b""),)
    return tuple((draw(st.sampled_from(["overwrite", "insert", "delete"])), draw(st.one_of(near_start, anywhere)),
                  draw(st.binary(min_size=1, max_size=8))) for _ in range(draw(st.integers(1, 3))))

def apply(data, damage):
    for kind, at, chunk in damage:
        if kind == "cut":
            data = data[:at]
        elif kind == "overwrite":
            data = data[:at] + chunk + data[at + len(chunk):]
        elif kind == "insert":
            data = data[:at] + chunk + data[at:]
        else:
            data = data[:at] + data[at + len(chunk):]
    return data

outcomes = {"error": 0, "read": 0}

@settings(max_examples=int(sys.argv[3]), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(damage=edits())
def run(damage):
    copy.write_bytes(apply(pristine, damage))
    try:
        points = read_point_cloud(copy)
    except PointADError as exc:
        message = str(exc)
        assert message.startswith(f"{copy}: ") and "\\n" not in message, message
        outcomes["error"] += 1
        return
    assert points.dtype == np.float64 and points.ndim == 2 and points.shape[1] == 3 and len(points) > 0
    outcomes["read"] += 1

run()
print(outcomes["error"], outcomes["read"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["las", "las14", "laz", "e57"])
def test_damaged_scanner_file(written, tmp_path, kind):
    """Cuts, overwrites, insertions and deletions (hypothesis, derandomized): our one-line error naming the file,
    or a readable cloud; in a child under the heap limit, so a crash or a runaway allocation fails here."""
    suffix = ".e57" if kind == "e57" else ".laz" if kind == "laz" else ".las"
    source = tmp_path / f"source{suffix}"
    source.write_bytes(written[kind])
    result = child(FUZZ, source, tmp_path / f"damaged{suffix}", 60, cwd=tmp_path)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    errors, reads = map(int, result.stdout.split())
    assert errors > 0 and errors + reads >= 1, result.stdout
