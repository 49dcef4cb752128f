"""On-disk container for compressed files (pure Python and NumPy; no JAX).

Layout, all integers little-endian:

    header      magic (8 bytes) | version u16 | fingerprint_bytes u16 | chunk_size_bytes u32 |
                original_length_bytes u64 | num_chunks u64 | original_sha256 (32 bytes) |
                fingerprint (fingerprint_bytes) | header_crc32 u32 (of everything before it)
    chunk table num_chunks x (coded_length_bytes u32 | num_symbols u32 | payload_crc32 u32) |
                table_crc32 u32 (of the table entries)
    payloads    num_chunks payloads, back to back, in table order

Chunk `i` covers original bytes `[i * chunk_size_bytes, min((i + 1) * chunk_size_bytes,
original_length_bytes))`; `num_symbols` (tokens coded for it, at most its byte count) lets the
decoder size its loop for tokenisers whose token count is not the byte count. The fingerprint
is opaque bytes from the caller (e.g. a sha256 of the model parameters and tokenizer name).

Both `ContainerWriter` and `ContainerReader` stream: the writer reserves the header and table,
appends payloads one by one and patches the header and table entries in place (so it needs a
seekable file, as `atomic_output` gives); the reader validates the header and the whole table
(checksums, lengths against the file size) before handing out payloads one by one, so nothing
is ever allocated from an unvalidated length and memory use does not grow with the file.
Every problem with a file raises `FormatError` with a one-line message.

The fingerprint compress.py stores is a `StreamInfo`: the model's sha256 and everything that
fixes the coder's compiled program (lanes, chunk length, precision, attention blocks) or its
floats (jax version, device kind). A decoder reads it first and refuses a mismatch up front.
"""

import contextlib
import dataclasses
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

MAGIC = b"\x89LMC\r\n\x1a\n"  # Non-ASCII first byte and CR/LF/^Z catch text-mode mangling.
VERSION = 2  # 2: range-coded payloads (1: rANS, refused)
MAX_FINGERPRINT_BYTES = 1024
MAX_CHUNK_SIZE_BYTES = 1 << 30
MAX_ORIGINAL_LENGTH_BYTES = 1 << 62
SHA256_BYTES = 32

_FIXED = struct.Struct("<8sHHIQQ32s")
_CRC = struct.Struct("<I")
_ENTRY = struct.Struct("<III")
_TABLE_BLOCK_ENTRIES = 4096


class FormatError(ValueError):
    """The file is not a valid container, is corrupted, or belongs to a different model."""


_INFO = struct.Struct("<4s32sIIBB16s8s")  # tag, model, lanes, chunk, precision, blocks, jax, device
_INFO_TAG = b"LMC1"


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """What decoding a stream needs to match: stored as the container's fingerprint.

    Attributes:
      model_sha256: the model's fingerprint (32 bytes).
      lanes: chunks coded together in one group.
      chunk_tokens: tokens per chunk.
      precision_bits: log2 of each frequency table's total.
      attention_blocks: the coder's attention blocks.
      jax_version: the jax version that computed the model's floats (at most 16 characters).
      device: the kind of device ('cpu', 'gpu', at most 8 characters).
    """

    model_sha256: bytes
    lanes: int
    chunk_tokens: int
    precision_bits: int
    attention_blocks: int
    jax_version: str
    device: str

    def pack(self) -> bytes:
        """The fingerprint bytes."""
        return _INFO.pack(
            _INFO_TAG,
            self.model_sha256,
            self.lanes,
            self.chunk_tokens,
            self.precision_bits,
            self.attention_blocks,
            self.jax_version.encode()[:16],
            self.device.encode()[:8],
        )

    @classmethod
    def unpack(cls, blob: bytes) -> "StreamInfo":
        """Parses a fingerprint.

        Raises:
          FormatError: not a fingerprint compress.py writes, or impossible values.
        """
        if len(blob) != _INFO.size or not blob.startswith(_INFO_TAG):
            raise FormatError("not a stream made by compress.py (unknown fingerprint)")
        _, sha, lanes, chunk, precision, blocks, jax_version, device = _INFO.unpack(blob)
        if lanes < 1 or chunk < 1 or blocks < 1 or not 1 <= precision <= 16:
            raise FormatError(f"corrupted fingerprint (lanes={lanes}, chunk={chunk})")
        text = lambda field: field.rstrip(b"\0").decode(errors="replace")  # noqa: E731
        return cls(sha, lanes, chunk, precision, blocks, text(jax_version), text(device))

    def check_decodable(self, here: "StreamInfo") -> None:
        """Refuses to decode with another model or environment than the stream's.

        Args:
          here: this decoder's model fingerprint and environment (its shape fields unused).

        Raises:
          FormatError: naming the difference.
        """
        if self.model_sha256 != here.model_sha256:
            raise FormatError(
                "this stream was made by a different model (or checkpoint): decompress with the "
                "run and --step that compressed it"
            )
        if (self.jax_version, self.device) != (here.jax_version, here.device):
            raise FormatError(
                f"this stream was made with jax {self.jax_version} on {self.device}, this is "
                f"jax {here.jax_version} on {here.device}: exact decoding needs the same"
            )


@dataclasses.dataclass(frozen=True)
class Header:
    """Header fields of a container.

    Attributes:
        fingerprint: opaque model fingerprint supplied by the caller.
        chunk_size_bytes: original bytes per chunk (the last chunk may be shorter).
        original_length_bytes: length of the original data.
        original_sha256: sha256 digest of the original data (32 bytes).
        version: container version.
    """

    fingerprint: bytes
    chunk_size_bytes: int
    original_length_bytes: int
    original_sha256: bytes = bytes(SHA256_BYTES)
    version: int = VERSION

    @property
    def num_chunks(self) -> int:
        """Number of chunks: `ceil(original_length_bytes / chunk_size_bytes)`."""
        return -(-self.original_length_bytes // self.chunk_size_bytes)

    def chunk_length_bytes(self, index: int) -> int:
        """Returns the original byte count of chunk `index`."""
        start = index * self.chunk_size_bytes
        return min(self.chunk_size_bytes, self.original_length_bytes - start)

    @property
    def size_bytes(self) -> int:
        """Bytes taken by the header, including its checksum."""
        return _FIXED.size + len(self.fingerprint) + _CRC.size

    def encode(self) -> bytes:
        """Serialises the header with its checksum."""
        fixed = _FIXED.pack(
            MAGIC,
            self.version,
            len(self.fingerprint),
            self.chunk_size_bytes,
            self.original_length_bytes,
            self.num_chunks,
            self.original_sha256,
        )
        body = fixed + self.fingerprint
        return body + _CRC.pack(zlib.crc32(body))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk as returned by `ContainerReader.chunks`.

    Attributes:
        index: position of the chunk in the file.
        length_bytes: original bytes the chunk decodes to.
        num_symbols: tokens coded in the payload.
        payload: the coded bytes.
    """

    index: int
    length_bytes: int
    num_symbols: int
    payload: bytes


def _check_header_values(header: Header) -> None:
    """Raises ValueError if a header could not be written (caller mistakes, not file errors)."""
    if not isinstance(header.fingerprint, bytes) or len(header.fingerprint) > MAX_FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be bytes of length <= {MAX_FINGERPRINT_BYTES}")
    if not 1 <= header.chunk_size_bytes <= MAX_CHUNK_SIZE_BYTES:
        raise ValueError(f"chunk_size_bytes must lie in [1, {MAX_CHUNK_SIZE_BYTES}]")
    if not 0 <= header.original_length_bytes <= MAX_ORIGINAL_LENGTH_BYTES:
        raise ValueError(f"original_length_bytes must lie in [0, {MAX_ORIGINAL_LENGTH_BYTES}]")
    if len(header.original_sha256) != SHA256_BYTES:
        raise ValueError(f"original_sha256 must be {SHA256_BYTES} bytes")


class ContainerWriter:
    """Writes a container chunk by chunk.

    Usage:

        with atomic_output(path) as f:
            writer = ContainerWriter(f, fingerprint, chunk_size_bytes, original_length_bytes)
            for payload, num_symbols in coded_chunks:
                writer.write_chunk(payload, num_symbols)
            writer.finish(hashlib.sha256(original).digest())
    """

    def __init__(
        self,
        file: BinaryIO,
        fingerprint: bytes,
        chunk_size_bytes: int,
        original_length_bytes: int,
    ):
        """Reserves the header and the chunk table at the current position of `file`.

        Args:
            file: seekable binary file opened for writing.
            fingerprint: opaque model fingerprint (at most 1024 bytes).
            chunk_size_bytes: original bytes per chunk.
            original_length_bytes: total original bytes (fixes the number of chunks).

        Raises:
            ValueError: out-of-range arguments.
        """
        self._header = Header(bytes(fingerprint), chunk_size_bytes, original_length_bytes)
        _check_header_values(self._header)
        self._file = file
        self._base = file.tell()
        self._table_offset = self._base + self._header.size_bytes
        self._end = self._table_offset + self._header.num_chunks * _ENTRY.size + _CRC.size
        self._table_crc = 0
        self._written = 0
        file.write(self._header.encode())
        file.write(bytes(self._end - self._table_offset))

    def write_chunk(self, payload: bytes, num_symbols: int) -> None:
        """Appends the next chunk's payload and records its table entry.

        Args:
            payload: coded bytes of the chunk (below 4 GiB).
            num_symbols: tokens coded in it, at most the chunk's original byte count.

        Raises:
            ValueError: too many chunks, or out-of-range lengths.
        """
        index = self._written
        if index >= self._header.num_chunks:
            raise ValueError(f"all {self._header.num_chunks} chunks have already been written")
        if not 0 <= num_symbols <= self._header.chunk_length_bytes(index):
            limit = self._header.chunk_length_bytes(index)
            raise ValueError(
                f"num_symbols={num_symbols} must lie in [0, {limit}] (the bytes of chunk {index})"
            )
        if len(payload) >= 1 << 32:
            raise ValueError("a chunk payload must be smaller than 4 GiB")
        entry = _ENTRY.pack(len(payload), num_symbols, zlib.crc32(payload))
        self._table_crc = zlib.crc32(entry, self._table_crc)
        self._file.seek(self._table_offset + index * _ENTRY.size)
        self._file.write(entry)
        self._file.seek(self._end)
        self._file.write(payload)
        self._end += len(payload)
        self._written += 1

    def finish(self, original_sha256: bytes) -> None:
        """Writes the table checksum and the final header; leaves the file positioned at its end.

        Args:
            original_sha256: sha256 digest of the original data.

        Raises:
            ValueError: not every chunk was written, or a digest of the wrong size.
        """
        if self._written != self._header.num_chunks:
            raise ValueError(f"wrote {self._written} of {self._header.num_chunks} chunks")
        self._header = dataclasses.replace(self._header, original_sha256=bytes(original_sha256))
        _check_header_values(self._header)
        self._file.seek(self._table_offset + self._header.num_chunks * _ENTRY.size)
        self._file.write(_CRC.pack(self._table_crc))
        self._file.seek(self._base)
        self._file.write(self._header.encode())
        self._file.seek(self._end)
        self._file.flush()


def _read_exact(file: BinaryIO, size: int, what: str) -> bytes:
    """Reads exactly `size` bytes or raises FormatError naming `what`."""
    data = file.read(size)
    if len(data) != size:
        raise FormatError(f"truncated {what}: expected {size} bytes, got {len(data)}")
    return data


def read_header(file: BinaryIO, expected_fingerprint: bytes | None = None) -> Header:
    """Reads and validates a header from the current position of `file`.

    Args:
        file: binary file.
        expected_fingerprint: if given, the fingerprint the file must carry.

    Returns:
        The validated `Header`.

    Raises:
        FormatError: wrong magic, unsupported version, truncated header, checksum mismatch,
            impossible lengths, or fingerprint mismatch.
    """
    fixed = file.read(_FIXED.size)
    if fixed[: len(MAGIC)] != MAGIC and not MAGIC.startswith(fixed):
        raise FormatError(f"not a compressed container: bad magic bytes {fixed[: len(MAGIC)]!r}")
    if len(fixed) < _FIXED.size:
        raise FormatError(f"truncated header: expected {_FIXED.size} bytes, got {len(fixed)}")
    _, version, fingerprint_bytes, chunk_size, length, num_chunks, digest = _FIXED.unpack(fixed)
    if version != VERSION:
        raise FormatError(
            f"unsupported container version {version} (this reader reads {VERSION}); streams of "
            "version 1 (rANS payloads) decode only with the release that wrote them"
            if version < VERSION
            else f"unsupported container version {version} (this reader reads {VERSION}): "
            "made by a newer release"
        )
    if fingerprint_bytes > MAX_FINGERPRINT_BYTES:
        raise FormatError(f"impossible lengths: fingerprint of {fingerprint_bytes} bytes")
    rest = file.read(fingerprint_bytes + _CRC.size)
    if len(rest) < fingerprint_bytes + _CRC.size:
        raise FormatError(
            f"truncated header: expected {len(fixed) + fingerprint_bytes + _CRC.size} bytes, "
            f"got {len(fixed) + len(rest)}"
        )
    fingerprint = rest[:fingerprint_bytes]
    (stored_crc,) = _CRC.unpack(rest[fingerprint_bytes:])
    computed_crc = zlib.crc32(fixed + fingerprint)
    if stored_crc != computed_crc:
        raise FormatError(
            f"header checksum mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
        )
    header = Header(fingerprint, chunk_size, length, digest, version)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE_BYTES or length > MAX_ORIGINAL_LENGTH_BYTES:
        raise FormatError(f"impossible lengths: chunk_size_bytes={chunk_size}, length={length}")
    if num_chunks != header.num_chunks:
        raise FormatError(
            f"impossible lengths: {num_chunks} chunks for {length} bytes in chunks of {chunk_size}"
        )
    if expected_fingerprint is not None and fingerprint != bytes(expected_fingerprint):
        expected = bytes(expected_fingerprint).hex()[:16]
        raise FormatError(
            "fingerprint mismatch: this stream was made by a different model "
            f"(file {fingerprint.hex()[:16]}..., expected {expected}...)"
        )
    return header


class ContainerReader:
    """Reads a container chunk by chunk, validating everything.

    The constructor reads the header and scans the chunk table once (checksum, per-entry
    bounds, total size against the file size); `chunks()` then yields payloads one at a time.
    """

    def __init__(self, file: BinaryIO, expected_fingerprint: bytes | None = None):
        """Validates the header and the chunk table of a seekable binary `file`.

        Args:
            file: seekable binary file positioned at the start of the container.
            expected_fingerprint: if given, the model fingerprint the file must carry.

        Raises:
            FormatError: any problem with the file (see `read_header` and `_scan_table`).
        """
        self._file = file
        base = file.tell()
        self.header = read_header(file, expected_fingerprint)
        self._table_offset = base + self.header.size_bytes
        self._payload_offset = self._table_offset + self.header.num_chunks * _ENTRY.size + _CRC.size
        file_end = file.seek(0, os.SEEK_END)
        if self._payload_offset > file_end:
            raise FormatError(
                f"truncated chunk table: {self.header.num_chunks} chunks need "
                f"{self._payload_offset - base} bytes of header and table, the file has "
                f"{file_end - base}"
            )
        payload_bytes = self._scan_table()
        available = file_end - self._payload_offset
        if available < payload_bytes:
            raise FormatError(
                f"truncated payload: the chunks need {payload_bytes} bytes, {available} remain"
            )
        if available > payload_bytes:
            raise FormatError(
                f"trailing garbage: {available - payload_bytes} bytes after the last chunk"
            )

    def _table_blocks(self) -> Iterator[tuple[int, bytes]]:
        """Yields `(index of the first entry, raw entries)` for blocks of the chunk table."""
        for first in range(0, self.header.num_chunks, _TABLE_BLOCK_ENTRIES):
            count = min(_TABLE_BLOCK_ENTRIES, self.header.num_chunks - first)
            self._file.seek(self._table_offset + first * _ENTRY.size)
            yield first, _read_exact(self._file, count * _ENTRY.size, "chunk table")

    def _scan_table(self) -> int:
        """Checks the table checksum and every entry; returns the total payload bytes."""
        crc, total, problem = 0, 0, None
        chunk_size, length = self.header.chunk_size_bytes, self.header.original_length_bytes
        for first, block in self._table_blocks():
            crc = zlib.crc32(block, crc)
            entries = np.frombuffer(block, dtype="<u4").reshape(-1, 3).astype(np.int64)
            total += int(entries[:, 0].sum())
            starts = (first + np.arange(len(entries), dtype=np.int64)) * chunk_size
            bad = np.flatnonzero(entries[:, 1] > np.minimum(chunk_size, length - starts))
            if problem is None and bad.size:
                index = first + int(bad[0])
                problem = (
                    f"impossible lengths: chunk {index} has {entries[bad[0], 1]} symbols for "
                    f"{self.header.chunk_length_bytes(index)} bytes"
                )
        self._file.seek(self._table_offset + self.header.num_chunks * _ENTRY.size)
        (stored,) = _CRC.unpack(_read_exact(self._file, _CRC.size, "chunk table"))
        if stored != crc:  # Checked first: a corrupted entry is reported as corruption.
            raise FormatError(
                f"chunk table checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
            )
        if problem:
            raise FormatError(problem)
        return total

    def chunks(self) -> Iterator[Chunk]:
        """Yields the chunks in order, checking each payload's checksum.

        Yields:
            `Chunk` records.

        Raises:
            FormatError: truncated payload (the file shrank) or payload checksum mismatch.
        """
        offset = self._payload_offset
        for first, block in self._table_blocks():
            for i, (size, num_symbols, stored) in enumerate(_ENTRY.iter_unpack(block)):
                index = first + i
                self._file.seek(offset)
                payload = _read_exact(self._file, size, f"payload of chunk {index}")
                computed = zlib.crc32(payload)
                if computed != stored:
                    raise FormatError(
                        f"payload checksum mismatch in chunk {index} (stored {stored:#010x}, "
                        f"computed {computed:#010x})"
                    )
                offset += size
                yield Chunk(index, self.header.chunk_length_bytes(index), num_symbols, payload)

    def verify_original(self, sha256_digest: bytes) -> None:
        """Checks the digest of the decoded data against the stored one.

        Args:
            sha256_digest: sha256 of the decoded bytes.

        Raises:
            FormatError: the digests differ.
        """
        if bytes(sha256_digest) != self.header.original_sha256:
            got, stored = bytes(sha256_digest).hex()[:16], self.header.original_sha256.hex()[:16]
            raise FormatError(
                f"decoded data does not match the stored sha256 ({got}... != {stored}...)"
            )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Opens a temporary file next to `path`; on success fsyncs it and renames it to `path`.

    If the body raises (or the process dies), `path` is untouched: the temporary file is deleted
    on an exception, and never has the final name before it is complete.

    Args:
        path: final output path.

    Yields:
        A seekable binary file opened for reading and writing.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory
    )
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp's 0600 would surprise users.
        with os.fdopen(fd, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    with contextlib.suppress(OSError):  # Make the rename durable where the platform allows.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
