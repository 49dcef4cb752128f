"""Tests for coding.container: round trips, every corruption -> FormatError, bounded reads,
atomic output."""

import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import zlib

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from coding import container, range_coder

INFO = b'{"model":"test"}'
ORIGINAL = bytes(range(25))


def _write(groups, chunk_size, length, group_chunks, columns=(), info=INFO, original=ORIGINAL):
    """The bytes of a container: `groups` is a list of (payloads, symbols, modes)."""
    file = io.BytesIO()
    writer = container.ContainerWriter(file, info, chunk_size, length, group_chunks, columns)
    offset = 0
    for payloads, symbols, modes in groups:
        size = sum(
            writer.header.chunk_length_bytes(writer._next_chunk + i) for i in range(len(payloads))
        )
        writer.write_group(payloads, original[offset : offset + size], symbols, modes)
        offset += size
    writer.finish(hashlib.sha256(original).digest())
    assert writer.bytes_written == len(file.getvalue())
    return file.getvalue()


def _read_all(data: bytes):
    reader = container.ContainerReader(io.BytesIO(data))
    groups = list(reader.groups())
    return reader, groups


# 25 bytes in chunks of 10, groups of 2: chunk 1 is stored raw (its payload is not shorter).
SAMPLE = _write(
    [([b"\x01\x02\x03\x04", b"0123456789abc"], [7, 10], [0, 2]), ([b"xyz!"], [5], [1])],
    10,
    25,
    2,
    ("symbols", "mode"),
)


def test_round_trip_groups_columns_and_raw_chunks():
    reader, groups = _read_all(SAMPLE)
    h = reader.header
    assert (h.chunk_size_bytes, h.original_length_bytes, h.num_chunks, h.num_groups) == (
        10,
        25,
        3,
        2,
    )
    assert h.info == INFO and h.columns == ("length", "symbols", "mode")
    chunks = [c for g in groups for c in g.chunks]
    assert [c.payload for c in chunks] == [b"\x01\x02\x03\x04", ORIGINAL[10:20], b"xyz!"]
    assert [c.raw for c in chunks] == [False, True, False]
    assert [c.symbols for c in chunks] == [7, 10, 5] and [c.mode for c in chunks] == [0, 2, 1]
    assert [c.length_bytes for c in chunks] == [10, 10, 5]
    groups[0].verify(ORIGINAL[:20])
    with pytest.raises(container.FormatError, match=r"group 1 \(chunks 2-2\) decoded to other"):
        groups[1].verify(b"wrong")
    reader.verify_original(hashlib.sha256(ORIGINAL).digest())
    with pytest.raises(container.FormatError, match="does not match the stored sha256"):
        reader.verify_original(hashlib.sha256(b"other").digest())


def test_golden_layout():
    """Freezes the on-disk format: regenerate only on purpose, with a version bump."""
    assert SAMPLE[:8] == b"\x89LMC\r\n\x1a\n" and container.VERSION == 6
    expected = "8ac35ef8575e355c157968df876d5f97eb4bf19cec55bea3064fb7a847659396"
    assert hashlib.sha256(SAMPLE).hexdigest() == expected


def test_metadata_costs_about_a_byte_per_chunk():
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(int(n)) for n in rng.integers(480, 540, 64)]  # text at ~2 bits/byte
    original = rng.bytes(64 * 2048)
    data = _write([(payloads, (), ())], 2048, len(original), 64, original=original)
    overhead = len(data) - sum(map(len, payloads))
    header = len(container.Header(INFO, 2048, len(original), 64).encode())
    assert overhead - header - 36 <= 64 * 1 + 2 + 8  # lengths: 6 bits each, plus crcs


def test_empty_original():
    data = _write([], 2048, 0, 1, original=b"")
    reader, groups = _read_all(data)
    assert reader.header.num_chunks == 0 and groups == []


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    chunk_size=st.integers(1, 50),
    length=st.integers(0, 400),
    group_chunks=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_random_layouts(chunk_size, length, group_chunks, seed):
    rng = np.random.default_rng(seed)
    original = rng.bytes(length)
    num_chunks = -(-length // chunk_size)
    lengths = [min(chunk_size, length - i * chunk_size) for i in range(num_chunks)]
    payloads = [rng.bytes(int(rng.integers(0, n + 3))) for n in lengths]
    symbols = [int(rng.integers(0, n + 1)) for n in lengths]
    groups = [
        (payloads[i : i + group_chunks], symbols[i : i + group_chunks], ())
        for i in range(0, num_chunks, group_chunks)
    ]
    data = _write(groups, chunk_size, length, group_chunks, ("symbols",), original=original)
    reader, read = _read_all(data)
    chunks = [c for g in read for c in g.chunks]
    expected = [
        original[i * chunk_size : i * chunk_size + n] if len(p) >= n else p
        for i, (p, n) in enumerate(zip(payloads, lengths, strict=True))
    ]
    assert [c.payload for c in chunks] == expected
    assert [c.raw for c in chunks] == [len(p) >= n for p, n in zip(payloads, lengths, strict=True)]
    assert [c.symbols for c in chunks] == symbols
    for g in read:
        g.verify(b"".join(original[c.index * chunk_size :][: c.length_bytes] for c in g.chunks))


def test_pack_column_is_compact_and_exact():
    for values in ([], [5], [0, 0, 0], [500, 530, 499, 511], [1, 2**31]):
        packed = container.pack_column(values)
        source = container._Source(io.BytesIO(packed))
        assert container._read_column(source, len(values), "x", 2**32) == values
    assert len(container.pack_column([500, 530, 499, 511])) == 2 + 1 + 3  # 6 bits each


def _reference_column(values):
    """The block layout written out bit by bit: varint base, width, values lsb first."""
    base = min(values, default=0)
    width = (max(values, default=0) - base).bit_length()
    bits = [(v - base) >> i & 1 for v in values for i in range(width)]
    bits += [0] * (-len(bits) % 8)
    packed = bytes(
        sum(b << i for i, b in enumerate(bits[j : j + 8])) for j in range(0, len(bits), 8)
    )
    varint, rest = bytearray(), base
    while True:
        varint.append(rest & 0x7F | (0x80 if rest >> 7 else 0))
        rest >>= 7
        if not rest:
            break
    return bytes(varint) + bytes([width]) + packed


def test_pack_column_matches_the_layout_bit_for_bit():
    rng = np.random.default_rng(11)
    for width in [0, 1, 3, 7, 8, 13, 31, 32]:
        for count in [0, 1, 5, 64, 333]:
            base = int(rng.integers(0, 2**20))
            values = [base + int(v) for v in rng.integers(0, 2**width, count)]
            packed = container.pack_column(values)
            assert packed == _reference_column(values), (width, count)
            source = container._Source(io.BytesIO(packed))
            assert container._read_column(source, count, "x", 2**33) == values


def _python_lines(function, *args):
    """Lines of Python run by `function(*args)` (a measure of work that does not depend on the
    machine's speed)."""
    lines = 0

    def trace(frame, event, arg):
        nonlocal lines
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        result = function(*args)
    finally:
        sys.settrace(None)
    return lines, result


def test_reading_columns_takes_work_independent_of_their_length():
    # 65,536 chunks of 30-bit columns (a forged group of 2.6 MB once took minutes to parse):
    # the Python work of checking a file and unpacking a column stays the same whatever the
    # chunk count (the bits go through NumPy), so reading is linear in the file's size.
    def container_of(count):
        rng = np.random.default_rng(count)
        file = io.BytesIO()
        writer = container.ContainerWriter(file, INFO, 1, count, count, ("symbols",))
        symbols = [int(v) for v in rng.integers(0, 2**30, count)]
        writer.write_group([b""] * count, bytes(count), symbols)
        writer.finish(hashlib.sha256(bytes(count)).digest())
        return file.getvalue(), symbols

    def check(data):
        return container.ContainerReader(io.BytesIO(data))

    def column(data, count):
        source = container._Source(io.BytesIO(data))
        return container._read_column(source, count, "x", 2**30)

    small, small_symbols = container_of(64)
    large, large_symbols = container_of(65536)
    assert _python_lines(check, large)[0] <= _python_lines(check, small)[0] + 40  # varints
    packed = [container.pack_column(v) for v in (small_symbols, large_symbols)]
    small_lines, values = _python_lines(column, packed[0], 64)
    large_lines, values = _python_lines(column, packed[1], 65536)
    assert values == large_symbols and large_lines <= small_lines + 40
    reader = check(large)
    reader.max_payload_bytes = 2**30  # symbols' limit
    group = reader._read_group(0)
    assert [c.symbols for c in group.chunks] == large_symbols


def test_coded_streams_survive_the_container():
    tables = np.tile(np.array([2**15, 2**14, 2**13, 2**13], np.int32), (3, 9, 1))
    symbols = np.random.default_rng(0).integers(4, size=(3, 9))
    lengths = np.array([9, 9, 2])
    data, num_bytes = range_coder.encode_np(
        *range_coder.symbol_intervals_np(tables, symbols), lengths
    )
    payloads = [row[:n].tobytes() for row, n in zip(data, num_bytes, strict=True)]
    original = bytes(20)
    stored = _write([(payloads, list(lengths), ())], 9, 20, 3, ("symbols",), original=original)
    _, (group,) = _read_all(stored)
    assert not any(c.raw for c in group.chunks)
    padded, counts = range_coder.pad_streams([c.payload for c in group.chunks])
    decoded, errors = range_coder.decode_tables_np(
        padded, counts, tables, [c.symbols for c in group.chunks]
    )
    range_coder.check_errors(errors)
    np.testing.assert_array_equal(decoded, np.where(np.arange(9) < lengths[:, None], symbols, 0))


def _reseal_header(data: bytes, **fields) -> bytes:
    """Rewrites header fields and recomputes the header checksum (a forged stream)."""
    names = ["magic", "version", "info_bytes", "chunk_size", "length", "group_chunks", "columns"]
    values = list(container._FIXED.unpack_from(data))
    for name, value in fields.items():
        values[names.index(name)] = value
    info_bytes = len(INFO)
    fixed = container._FIXED.pack(*values)
    body = fixed + data[container._FIXED.size : container._FIXED.size + info_bytes]
    rest = data[container._FIXED.size + info_bytes + 4 :]
    return body + struct.pack("<I", zlib.crc32(body)) + rest


_HEADER = container._FIXED.size + len(INFO) + 4


def _flip(offset: int, xor: int = 0x40) -> bytes:
    data = bytearray(SAMPLE)
    data[offset] ^= xor
    return bytes(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"PK\x03\x04" + SAMPLE[4:], r"not a compressed container: bad magic bytes"),
        (
            _reseal_header(SAMPLE, version=7),
            r"version 7 \(this reader reads 4, 5 and 6\): made by a",
        ),
        (_reseal_header(SAMPLE, version=1), r"version 1 \(this reader reads 4, 5 and 6\): .*rANS"),
        (
            _reseal_header(SAMPLE, version=3),
            r"version 3 \(this reader reads 4, 5 and 6\): .*per block",
        ),
        (b"", r"truncated header: expected 29 bytes, got 0"),
        (SAMPLE[:20], r"truncated header"),
        (SAMPLE[: _HEADER - 1], r"truncated header"),
        (_flip(20), r"header checksum mismatch"),
        (_flip(_HEADER - 6), r"header checksum mismatch"),  # inside the info
        (_reseal_header(SAMPLE, chunk_size=0), r"impossible header values: chunk_size_bytes"),
        (_reseal_header(SAMPLE, group_chunks=0), r"impossible header values: group_chunks"),
        (_reseal_header(SAMPLE, info_bytes=60000), r"impossible lengths: an info of 60000"),
        (_reseal_header(SAMPLE, columns=0x0E), r"impossible header values: columns"),
        (_reseal_header(SAMPLE, length=2**40), r"truncated or forged: .* groups need at least"),
        (_reseal_header(SAMPLE, length=35), r"truncated group 1|trailer|impossible"),
        (SAMPLE[:-1], r"truncated trailer"),
        (SAMPLE[: _HEADER + 3], r"truncated|forged"),
        (SAMPLE + b"\x00" * 5, r"trailing garbage: 5 bytes after the trailer"),
        (_flip(len(SAMPLE) - 46), r"checksum mismatch in group 1 \(chunks 2-2\)"),  # a payload
        (_flip(len(SAMPLE) - 1), r"trailer checksum mismatch"),
    ],
)
def test_corruptions_raise_format_error(data, message):
    with pytest.raises(container.FormatError, match=message):
        _read_all(data)


def test_version_4_streams_are_still_read():
    # Version 5 only added coder settings a version-4 stream lacks: its bytes read the same.
    old, new = _read_all(_reseal_header(SAMPLE, version=4)), _read_all(SAMPLE)
    assert old[0].header.version == 4 and new[0].header.version == 6
    payloads = [[[c.payload for c in g.chunks] for g in groups] for _, groups in (old, new)]
    assert payloads[0] == payloads[1] and len(payloads[0]) == 2


def test_impossible_lengths_are_refused_before_reading_payloads():
    # A forged group whose length block claims 1 GB for a 10-byte chunk, checksums recomputed.
    file = io.BytesIO()
    writer = container.ContainerWriter(file, INFO, 10, 10, 1)
    body = container.pack_column([2**30])
    file.write(body + struct.pack("<II", zlib.crc32(body), 0))
    writer._next_chunk = 1
    writer.finish(bytes(32))
    with pytest.raises(container.FormatError, match="lengths of group 0|truncated group 0"):
        _read_all(file.getvalue())


def test_stream_info_round_trip_and_refusals():
    info = container.StreamInfo("ab" * 32, {"lanes": 4}, {"jax": "0.11.2", "backend": "cpu"})
    assert container.StreamInfo.unpack(info.pack()) == info
    assert len(info.pack()) < container.MAX_INFO_BYTES
    for bad in (b"", b"{}", b"[1]", b"\xff"):
        with pytest.raises(container.FormatError, match="not a stream made by compress.py"):
            container.StreamInfo.unpack(bad)


def test_writer_rejects_misuse():
    writer = container.ContainerWriter(io.BytesIO(), INFO, 10, 15, 2)
    with pytest.raises(ValueError, match="needs 2 chunks of 15 bytes"):
        writer.write_group([b"ab"], bytes(10))
    with pytest.raises(ValueError, match="wrote 0 of 2 chunks"):
        writer.finish(bytes(32))
    with pytest.raises(ValueError, match="column 'length'|needs"):
        container.ContainerWriter(io.BytesIO(), INFO, 10, 15, 2, ("symbols",)).write_group(
            [b"a", b"b"], bytes(15), [1]
        )
    with pytest.raises(ValueError, match="chunk_size_bytes must lie in"):
        container.ContainerWriter(io.BytesIO(), INFO, 0, 15, 1)
    with pytest.raises(ValueError, match="info must be at most 1024 bytes"):
        container.ContainerWriter(io.BytesIO(), bytes(1025), 10, 15, 1)


def test_atomic_output_publishes_only_on_success(tmp_path):
    path = tmp_path / "result.lmc"
    with pytest.raises(RuntimeError, match="model crashed"):
        with container.atomic_output(path) as file:
            file.write(b"partial")
            raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []
    with container.atomic_output(path) as file:
        file.write(b"complete")
        assert not path.exists()  # Not visible under its final name before the end.
        (partial,) = container.stale_partials(path)
        assert os.stat(partial).st_mode & 0o077 == 0  # owner only while incomplete
    assert path.read_bytes() == b"complete" and os.listdir(tmp_path) == ["result.lmc"]
    with pytest.raises(KeyboardInterrupt):
        with container.atomic_output(path) as file:
            file.write(b"replacement")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"complete" and os.listdir(tmp_path) == ["result.lmc"]


def test_stale_partials_of_a_killed_run_are_removed(tmp_path):
    path = tmp_path / "out"
    stale = tmp_path / ".out.abc123.partial"
    stale.write_bytes(b"78 KB of decoded plaintext")
    other = tmp_path / ".other.abc.partial"
    other.write_bytes(b"not ours")
    with container.atomic_output(path) as file:
        file.write(b"x")
    assert not stale.exists() and other.exists()


_KILL_WHILE_WRITING = """
import signal, sys, time
from coding import container
# Ctrl-C as in a terminal, even where a shell started the tests in the background (SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
with container.atomic_output(sys.argv[1]) as f:
    f.write(b"half")
    f.flush()
    print("writing", flush=True)
    for _ in range(600):  # short sleeps: a signal the kernel hands to another thread (numpy's
        time.sleep(0.1)  # BLAS) is still taken within 0.1 s, as in the real coding loop
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_removes_the_partial_file(tmp_path, signum):
    path = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen(
        [sys.executable, "-c", _KILL_WHILE_WRITING, str(path)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signum)
    p.wait(timeout=60)
    assert p.returncode != 0
    assert os.listdir(tmp_path) == []
