"""Tests for coding.container: round trips, every corruption -> FormatError, atomic output."""

import hashlib
import io
import os
import struct
import zlib

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from coding import container, range_coder

FINGERPRINT = hashlib.sha256(b"model-A").digest()
OTHER_FINGERPRINT = hashlib.sha256(b"model-B").digest()


def _write(payloads, num_symbols, chunk_size_bytes, length_bytes, fingerprint=FINGERPRINT):
    """Returns the bytes of a container holding `payloads`."""
    file = io.BytesIO()
    writer = container.ContainerWriter(file, fingerprint, chunk_size_bytes, length_bytes)
    for payload, count in zip(payloads, num_symbols, strict=True):
        writer.write_chunk(payload, count)
    writer.finish(hashlib.sha256(b"original").digest())
    return file.getvalue()


def _read_all(data: bytes, fingerprint=FINGERPRINT):
    reader = container.ContainerReader(io.BytesIO(data), fingerprint)
    return reader.header, list(reader.chunks())


SAMPLE = _write([b"\x01\x02\x03\x04", b"", b"xyz!"], [10, 0, 5], 10, 25)
_HEADER_BYTES = container.Header(FINGERPRINT, 10, 25).size_bytes
_TABLE_BYTES = 3 * 12 + 4


def _reseal_header(data: bytes, **fields) -> bytes:
    """Rewrites header fields of SAMPLE and recomputes the header checksum."""
    values = list(struct.unpack_from("<8sHHIQQ32s", data))
    names = ["magic", "version", "fingerprint_bytes", "chunk_size", "length", "chunks", "sha"]
    for name, value in fields.items():
        values[names.index(name)] = value
    fixed = struct.pack("<8sHHIQQ32s", *values)
    body = fixed + data[len(fixed) : _HEADER_BYTES - 4]
    return body + struct.pack("<I", zlib.crc32(body)) + data[_HEADER_BYTES:]


def test_round_trip_header_and_payloads():
    header, chunks = _read_all(SAMPLE)
    assert header.fingerprint == FINGERPRINT and header.version == container.VERSION
    assert (header.chunk_size_bytes, header.original_length_bytes, header.num_chunks) == (10, 25, 3)
    assert header.original_sha256 == hashlib.sha256(b"original").digest()
    assert [c.payload for c in chunks] == [b"\x01\x02\x03\x04", b"", b"xyz!"]
    assert [c.num_symbols for c in chunks] == [10, 0, 5]
    assert [c.length_bytes for c in chunks] == [10, 10, 5]
    assert len(SAMPLE) == _HEADER_BYTES + _TABLE_BYTES + 8


def test_golden_layout():
    """Freezes the on-disk format: regenerate only on purpose, with a version bump."""
    assert SAMPLE[:8] == b"\x89LMC\r\n\x1a\n"
    expected = "17e11a7c38eac0b9ee0000789dd86362e423fe281b0b4ceba88fc80ac63825ed"
    assert hashlib.sha256(SAMPLE).hexdigest() == expected


def test_empty_original_and_reader_without_fingerprint_check():
    data = _write([], [], 2048, 0, fingerprint=b"")
    header, chunks = _read_all(data, fingerprint=None)
    assert header.num_chunks == 0 and chunks == []


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    chunk_size=st.integers(1, 50),
    length=st.integers(0, 400),
    fingerprint=st.binary(max_size=64),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_random_layouts(chunk_size, length, fingerprint, seed):
    rng = np.random.default_rng(seed)
    num_chunks = -(-length // chunk_size)
    payloads = [rng.bytes(int(rng.integers(0, 40))) for _ in range(num_chunks)]
    lengths = [min(chunk_size, length - i * chunk_size) for i in range(num_chunks)]
    counts = [int(rng.integers(0, n + 1)) for n in lengths]
    header, chunks = _read_all(
        _write(payloads, counts, chunk_size, length, fingerprint), fingerprint
    )
    assert [c.payload for c in chunks] == payloads
    assert [c.num_symbols for c in chunks] == counts
    assert [c.length_bytes for c in chunks] == lengths


def test_many_chunks_cross_table_blocks():
    count = 2 * container._TABLE_BLOCK_ENTRIES + 5
    payloads = [i.to_bytes(3, "little") for i in range(count)]
    data = _write(payloads, [i % 2 for i in range(count)], 1, count)
    _, chunks = _read_all(data)
    assert [c.payload for c in chunks] == payloads
    assert [c.index for c in chunks] == list(range(count))
    corrupted = bytearray(data)
    corrupted[-1] ^= 1
    with pytest.raises(
        container.FormatError, match=f"payload checksum mismatch in chunk {count - 1}"
    ):
        _read_all(bytes(corrupted))


def test_coded_streams_survive_the_container(tmp_path):
    tables = np.tile(np.array([2**15, 2**14, 2**13, 2**13], np.int32), (3, 9, 1))
    symbols = np.random.default_rng(0).integers(4, size=(3, 9))
    lengths = np.array([9, 9, 2])
    data, num_bytes = range_coder.encode_np(
        *range_coder.symbol_intervals_np(tables, symbols), lengths
    )
    path = tmp_path / "out.lmc"
    with container.atomic_output(path) as file:
        writer = container.ContainerWriter(file, FINGERPRINT, 9, 20)
        for row, count, n in zip(data, num_bytes, lengths, strict=True):
            writer.write_chunk(row[:count].tobytes(), int(n))
        writer.finish(hashlib.sha256(b"original").digest())
    with open(path, "rb") as file:
        chunks = list(container.ContainerReader(file, FINGERPRINT).chunks())
    padded, counts = range_coder.pad_streams([c.payload for c in chunks])
    decoded, errors = range_coder.decode_tables_np(
        padded, counts, tables, [c.num_symbols for c in chunks]
    )
    range_coder.check_errors(errors)
    np.testing.assert_array_equal(decoded, np.where(np.arange(9) < lengths[:, None], symbols, 0))


def _corrupt(offset: int, xor: int = 0x40) -> bytes:
    data = bytearray(SAMPLE)
    data[offset] ^= xor
    return bytes(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"PK\x03\x04" + SAMPLE[4:], r"not a compressed container: bad magic bytes"),
        (
            _reseal_header(SAMPLE, version=3),
            r"unsupported container version 3 \(this reader reads 2\): made by a newer release",
        ),
        (
            _reseal_header(SAMPLE, version=1),
            r"unsupported container version 1 \(this reader reads 2\); .*rANS",
        ),
        (b"", r"truncated header: expected 64 bytes, got 0"),
        (SAMPLE[:20], r"truncated header: expected 64 bytes, got 20"),
        (SAMPLE[: _HEADER_BYTES - 1], r"truncated header"),
        (
            _corrupt(20),
            r"header checksum mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)",
        ),
        (_corrupt(_HEADER_BYTES - 10), r"header checksum mismatch"),  # Inside the fingerprint.
        (
            _reseal_header(SAMPLE, chunks=4),
            r"impossible lengths: 4 chunks for 25 bytes in chunks of 10",
        ),
        (_reseal_header(SAMPLE, chunk_size=0), r"impossible lengths: chunk_size_bytes=0"),
        (
            _reseal_header(SAMPLE, fingerprint_bytes=60000),
            r"impossible lengths: fingerprint of 60000",
        ),
        (
            _reseal_header(SAMPLE, chunk_size=1, length=2**40, chunks=2**40),
            r"truncated chunk table",
        ),
        (SAMPLE[: _HEADER_BYTES + 5], r"truncated chunk table"),
        (_corrupt(_HEADER_BYTES + 8), r"chunk table checksum mismatch"),  # An entry's payload crc.
        (SAMPLE[:-1], r"truncated payload: the chunks need 8 bytes, 7 remain"),
        (SAMPLE + b"\x00" * 5, r"trailing garbage: 5 bytes after the last chunk"),
    ],
)
def test_corruptions_raise_format_error(data, message):
    with pytest.raises(container.FormatError, match=message):
        _read_all(data)


def test_impossible_symbol_count_in_a_resealed_table():
    data = bytearray(SAMPLE)
    struct.pack_into("<I", data, _HEADER_BYTES + 4, 11)  # Chunk 0: 11 symbols for 10 bytes.
    table = bytes(data[_HEADER_BYTES : _HEADER_BYTES + _TABLE_BYTES - 4])
    struct.pack_into("<I", data, _HEADER_BYTES + _TABLE_BYTES - 4, zlib.crc32(table))
    with pytest.raises(container.FormatError, match=r"impossible lengths: chunk 0 has 11 symbols"):
        _read_all(bytes(data))


def test_payload_corruption_and_model_mismatch():
    with pytest.raises(container.FormatError, match=r"payload checksum mismatch in chunk 2"):
        _read_all(_corrupt(len(SAMPLE) - 1))
    with pytest.raises(container.FormatError, match=r"this stream was made by a different model"):
        _read_all(SAMPLE, OTHER_FINGERPRINT)
    reader = container.ContainerReader(io.BytesIO(SAMPLE))
    reader.verify_original(hashlib.sha256(b"original").digest())
    with pytest.raises(
        container.FormatError, match=r"decoded data does not match the stored sha256"
    ):
        reader.verify_original(hashlib.sha256(b"0riginal").digest())
    assert issubclass(container.FormatError, ValueError)


def test_writer_rejects_misuse():
    writer = container.ContainerWriter(io.BytesIO(), FINGERPRINT, 10, 15)
    with pytest.raises(ValueError, match=r"num_symbols=11 must lie in \[0, 10\]"):
        writer.write_chunk(b"", 11)
    writer.write_chunk(b"ab", 10)
    with pytest.raises(ValueError, match=r"wrote 1 of 2 chunks"):
        writer.finish(bytes(32))
    writer.write_chunk(b"ab", 5)
    with pytest.raises(ValueError, match=r"all 2 chunks have already been written"):
        writer.write_chunk(b"ab", 1)
    with pytest.raises(ValueError, match=r"original_sha256 must be 32 bytes"):
        writer.finish(b"short")
    with pytest.raises(ValueError, match=r"chunk_size_bytes must lie in"):
        container.ContainerWriter(io.BytesIO(), FINGERPRINT, 0, 15)


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
    assert path.read_bytes() == b"complete" and os.listdir(tmp_path) == ["result.lmc"]
    with pytest.raises(KeyboardInterrupt):
        with container.atomic_output(path) as file:
            file.write(b"replacement")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"complete" and os.listdir(tmp_path) == ["result.lmc"]
