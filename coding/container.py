"""On-disk container for compressed files (pure Python and NumPy; no JAX).

Our own format rather than a general archive (zip, zstd frames): groups follow the coder's lanes,
and the checks name the chunk whose decoding went wrong, which needs a layout we control.

Layout (version 6, the same as 3 to 5), integers little-endian:

    header   magic (8 bytes) | version u16 | info_bytes u16 | chunk_size_bytes u32 |
             original_length_bytes u64 | group_chunks u32 | columns u8 |
             info (info_bytes of the writer's JSON, see `StreamInfo`) | header_crc32 u32
    groups   ceil(num_chunks / group_chunks) groups, back to back, each:
             one bit-packed block per column | payloads | group_crc32 u32 | original_crc32 u32
    trailer  original_sha256 (32 bytes) | trailer_crc32 u32

Chunk `i` covers original bytes `[i * chunk_size_bytes, min((i + 1) * chunk_size_bytes,
original_length_bytes))`, and the chunks are stored in groups of `group_chunks` (the coder's
lanes: a group is what the decoder decodes at once). Per chunk the group stores a few integers,
one *column* each, bit-packed: `length` (the payload's bytes; always), `symbols` (the tokens
coded for it, when tokenizers make that differ from its byte count) and `mode` (how its bytes
became tokens, for pretrained tokenizers). A block is `varint(base) | u8 width | count values of
(value - base) in `width` bits, least significant first, padded to a byte`: payloads of similar
length cost about a byte each. A payload as long as its chunk's original bytes is the chunk
itself, stored raw (the writer stores a chunk raw whenever coding it would not make it shorter),
so no file grows by more than its metadata.

Integrity: the header and trailer carry crc32s; each group carries the crc32 of its blocks and
payloads (checked before decoding) and the crc32 of its original bytes (checked after decoding:
the region is named when a decoder's tables differed from the encoder's, e.g. another machine's
floats); the trailer holds the sha256 of the whole original. Every problem with a file raises
`FormatError` with one line.

Bounded work: `ContainerReader` checks the header's counts against the file's size before
anything is read further (each group takes at least `MIN_GROUP_BYTES`), and every length
against the caller's maximum before its bytes are read; columns are packed and unpacked with
NumPy, so reading takes time linear in the file's size. The writer never seeks (its output can
be a pipe); the reader wants a seekable file for the size check (a pipe is spooled first).
"""

import contextlib
import dataclasses
import glob
import json
import os
import signal
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

MAGIC = b"\x89LMC\r\n\x1a\n"  # Non-ASCII first byte and CR/LF/^Z catch text-mode mangling.
# 6: an online model's recipe may mix count models with its Transformer ('order', 'table_bits',
#    'mix_learning_rate' under 'online') and start from a training run ('start': its fingerprint,
#    'architecture'); version 5's online recipes are version 6's with neither, and decode. The
#    layout is version 3's.
# 5: models named by kind ('model': 'run', 'hf' or 'online', an online model's recipe under
#    'online') and a float model's compute dtype ('dtype') for every kind; version 4's streams
#    are version 5's without them, and decode. The layout is version 3's.
# 4: the coder runs in per-block programs (skipping blocks past every chunk), top-k coding and
#    pretrained models (coder fields 'top_k', 'model'); the layout is version 3's.
# 3: grouped chunks, bit-packed columns, raw chunks, JSON info. 2: rANS-free v1.
VERSION = 6
READABLE_VERSIONS = (4, 5, 6)
_READABLE = f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}"
MAX_INFO_BYTES = 1024  # the fixed header stays under 1 KB
MAX_CHUNK_SIZE_BYTES = 1 << 30
MAX_GROUP_CHUNKS = 1 << 16
MAX_ORIGINAL_LENGTH_BYTES = 1 << 62
SHA256_BYTES = 32
COLUMNS = ("length", "symbols", "mode")  # bit i of the header's `columns` byte: COLUMNS[i]
MIN_GROUP_BYTES = 10  # one block (varint + width byte) and the two crc32s

_FIXED = struct.Struct("<8sHHIQIB")
_U32 = struct.Struct("<I")
_TRAILER = struct.Struct("<32sI")


class FormatError(ValueError):
    """The file is not a valid container, is corrupted, or belongs to a different model."""


@dataclasses.dataclass(frozen=True)
class Header:
    """Header fields of a container.

    Attributes:
      info: the writer's description of the stream (see `StreamInfo`), JSON bytes.
      chunk_size_bytes: original bytes per chunk (the last chunk may be shorter).
      original_length_bytes: length of the original data.
      group_chunks: chunks per group (the last group may hold fewer).
      columns: the per-chunk integers stored, a subset of `COLUMNS` with 'length' first.
      version: container version.
    """

    info: bytes
    chunk_size_bytes: int
    original_length_bytes: int
    group_chunks: int
    columns: tuple[str, ...] = ("length",)
    version: int = VERSION

    @property
    def num_chunks(self) -> int:
        return -(-self.original_length_bytes // self.chunk_size_bytes)

    @property
    def num_groups(self) -> int:
        return -(-self.num_chunks // self.group_chunks)

    def chunk_length_bytes(self, index: int) -> int:
        """The original byte count of chunk `index`."""
        start = index * self.chunk_size_bytes
        return min(self.chunk_size_bytes, self.original_length_bytes - start)

    def encode(self) -> bytes:
        mask = sum(1 << COLUMNS.index(c) for c in self.columns)
        fixed = _FIXED.pack(
            MAGIC,
            self.version,
            len(self.info),
            self.chunk_size_bytes,
            self.original_length_bytes,
            self.group_chunks,
            mask,
        )
        body = fixed + self.info
        return body + _U32.pack(zlib.crc32(body))

    def check(self) -> None:
        """Raises ValueError for values no writer may use."""
        if len(self.info) > MAX_INFO_BYTES:
            raise ValueError(f"info must be at most {MAX_INFO_BYTES} bytes")
        if not 1 <= self.chunk_size_bytes <= MAX_CHUNK_SIZE_BYTES:
            raise ValueError(f"chunk_size_bytes must lie in [1, {MAX_CHUNK_SIZE_BYTES}]")
        if not 0 <= self.original_length_bytes <= MAX_ORIGINAL_LENGTH_BYTES:
            raise ValueError(f"original_length_bytes must lie in [0, {MAX_ORIGINAL_LENGTH_BYTES}]")
        if not 1 <= self.group_chunks <= MAX_GROUP_CHUNKS:
            raise ValueError(f"group_chunks must lie in [1, {MAX_GROUP_CHUNKS}]")
        if not self.columns or self.columns[0] != "length" or set(self.columns) - set(COLUMNS):
            raise ValueError(f"columns must start with 'length' and come from {COLUMNS}")


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One stored chunk.

    Attributes:
      index: its position in the file.
      length_bytes: original bytes it stands for.
      payload: the coded bytes, or the original bytes themselves when `raw`.
      raw: the payload is the original (coding it would not have made it shorter).
      symbols: tokens coded for it (its byte count when the 'symbols' column is absent).
      mode: how its bytes became tokens (0 when the 'mode' column is absent).
    """

    index: int
    length_bytes: int
    payload: bytes
    raw: bool
    symbols: int
    mode: int = 0


# ---------------------------------------------------------------------------------------------
# Bit-packed columns.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pack_column(values: Sequence[int]) -> bytes:
    """`varint(min) | u8 width | (value - min) in `width` bits each`, for non-negative ints."""
    values = np.asarray(values, np.int64).reshape(-1)
    base = int(values.min()) if values.size else 0
    width = (int(values.max()) - base).bit_length() if values.size else 0
    bits = ((values[:, None] - base) >> np.arange(width)) & 1  # [count, width], lsb first
    packed = np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")
    return _varint(base) + bytes([width]) + packed.tobytes()


class _Source:
    """Reads from a file with a running crc32 and exact-length checks."""

    def __init__(self, file: BinaryIO):
        self.file, self.crc = file, 0

    def read(self, size: int, what: str) -> bytes:
        data = self.file.read(size)
        if len(data) != size:
            raise FormatError(f"truncated {what}: expected {size} bytes, got {len(data)}")
        self.crc = zlib.crc32(data, self.crc)
        return data

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 64, 7):
            (byte,) = self.read(1, what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise FormatError(f"corrupted {what}: a varint longer than 64 bits")


def _read_block(source: _Source, count: int, what: str, max_value: int) -> tuple[int, int, bytes]:
    """A column's block as (base, width, packed values), its base and width checked."""
    base = source.varint(what)
    (width,) = source.read(1, what)
    if width > 32 or base > max_value:
        raise FormatError(f"corrupted {what}: base {base}, width {width}")
    return base, width, source.read(-(-count * width // 8), what)


def _unpack(base: int, width: int, packed: bytes, count: int, what: str, max_value: int):
    """int64 [count] values of a block (linear time: NumPy, no big-integer shifts)."""
    if not width:
        return np.full(count, base, np.int64)
    bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")[: count * width]
    values = base + bits.reshape(count, width).astype(np.int64) @ (1 << np.arange(width))
    if values.size and values.max() > max_value:
        raise FormatError(f"corrupted {what}: a value of {values.max()} (at most {max_value})")
    return values


def _read_column(source: _Source, count: int, what: str, max_value: int) -> list[int]:
    base, width, packed = _read_block(source, count, what, max_value)
    return _unpack(base, width, packed, count, what, max_value).tolist()


def _column_sum(source: _Source, count: int, what: str, max_value: int) -> int:
    """The sum of a column's values, in time linear in its block's bytes (a block of width 0
    stands for `count` values in two bytes)."""
    base, width, packed = _read_block(source, count, what, max_value)
    if not width:
        return base * count
    return int(_unpack(base, width, packed, count, what, max_value).sum())


# ---------------------------------------------------------------------------------------------
# Writing.


class ContainerWriter:
    """Writes a container group by group, never seeking (the output may be a pipe).

    Usage:

        writer = ContainerWriter(file, info, chunk_size_bytes, original_length_bytes, lanes)
        for each group: writer.write_group(payloads, original_bytes, symbols=..., modes=...)
        writer.finish(hashlib.sha256(original).digest())

    Args:
      file: binary file opened for writing.
      info: the stream's description (at most 1024 bytes; e.g. `StreamInfo.pack()`).
      chunk_size_bytes: original bytes per chunk.
      original_length_bytes: total original bytes (fixes the number of chunks).
      group_chunks: chunks per group.
      columns: per-chunk integers stored besides 'length' ('symbols', 'mode').

    Raises:
      ValueError: out-of-range arguments.
    """

    def __init__(
        self,
        file: BinaryIO,
        info: bytes,
        chunk_size_bytes: int,
        original_length_bytes: int,
        group_chunks: int,
        columns: Sequence[str] = (),
    ):
        self.header = Header(
            bytes(info),
            chunk_size_bytes,
            original_length_bytes,
            group_chunks,
            ("length", *[c for c in COLUMNS[1:] if c in columns]),
        )
        self.header.check()
        self._file = file
        self._next_chunk = 0
        self.bytes_written = 0
        self._write(self.header.encode())

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_written += len(data)

    def write_group(
        self,
        payloads: Sequence[bytes],
        original: bytes,
        symbols: Sequence[int] = (),
        modes: Sequence[int] = (),
    ) -> list[bool]:
        """Appends the next group: its chunks' coded payloads and their original bytes.

        A chunk whose payload is not shorter than its original is stored raw.

        Returns:
          Per chunk, whether it was stored raw.

        Raises:
          ValueError: the wrong number of chunks, original bytes or column values.
        """
        h, first = self.header, self._next_chunk
        count = min(h.group_chunks, h.num_chunks - first)
        lengths = [h.chunk_length_bytes(i) for i in range(first, first + count)]
        if len(payloads) != count or len(original) != sum(lengths):
            raise ValueError(f"group at chunk {first} needs {count} chunks of {sum(lengths)} bytes")
        raw = [len(p) >= n for p, n in zip(payloads, lengths, strict=True)]
        stored, offset = [], 0
        for payload, n, is_raw in zip(payloads, lengths, raw, strict=True):
            stored.append(original[offset : offset + n] if is_raw else bytes(payload))
            offset += n
        columns = {"length": [len(p) for p in stored], "symbols": list(symbols)}
        columns["mode"] = list(modes)
        body = b"".join(pack_column(self._column(columns, c, count)) for c in h.columns)
        body += b"".join(stored)
        self._write(body + _U32.pack(zlib.crc32(body)) + _U32.pack(zlib.crc32(original)))
        self._next_chunk += count
        return raw

    @staticmethod
    def _column(columns: dict, name: str, count: int) -> list[int]:
        values = columns[name]
        if len(values) != count or any(v < 0 for v in values):
            raise ValueError(f"column {name!r} needs {count} non-negative values")
        return values

    def finish(self, original_sha256: bytes) -> None:
        """Writes the trailer.

        Raises:
          ValueError: not every chunk was written, or a digest of the wrong size.
        """
        if self._next_chunk != self.header.num_chunks:
            raise ValueError(f"wrote {self._next_chunk} of {self.header.num_chunks} chunks")
        if len(original_sha256) != SHA256_BYTES:
            raise ValueError(f"original_sha256 must be {SHA256_BYTES} bytes")
        digest = bytes(original_sha256)
        self._write(_TRAILER.pack(digest, zlib.crc32(digest)))
        self._file.flush()


# ---------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of chunks as read, with the crc32 of the original bytes it decodes to."""

    index: int
    chunks: list[Chunk]
    original_crc: int
    where: str

    def verify(self, original: bytes) -> None:
        """Checks the group's decoded bytes against the stored crc32.

        Raises:
          FormatError: they differ (names the group).
        """
        if zlib.crc32(original) != self.original_crc:
            raise FormatError(
                f"{self.where} decoded to other bytes than were compressed: the decoder's "
                "probabilities differed from the encoder's (another machine or setup than the "
                "stream records), or the stream is corrupted"
            )


def read_header(file: BinaryIO) -> Header:
    """Reads and validates a header from the current position of `file`.

    Raises:
      FormatError: wrong magic, unsupported version, truncated header, checksum mismatch or
        impossible values.
    """
    fixed = file.read(_FIXED.size)
    if fixed[: len(MAGIC)] != MAGIC and not MAGIC.startswith(fixed):
        raise FormatError(f"not a compressed container: bad magic bytes {fixed[: len(MAGIC)]!r}")
    if len(fixed) >= 10:
        (version,) = struct.unpack_from("<H", fixed, 8)
        if version not in READABLE_VERSIONS:
            raise FormatError(_version_message(version))
    if len(fixed) < _FIXED.size:
        raise FormatError(f"truncated header: expected {_FIXED.size} bytes, got {len(fixed)}")
    _, version, info_bytes, chunk_size, length, group_chunks, mask = _FIXED.unpack(fixed)
    if info_bytes > MAX_INFO_BYTES:
        raise FormatError(f"impossible lengths: an info of {info_bytes} bytes")
    rest = file.read(info_bytes + _U32.size)
    if len(rest) < info_bytes + _U32.size:
        raise FormatError(f"truncated header: expected {info_bytes + _U32.size} more bytes")
    info, (stored,) = rest[:info_bytes], _U32.unpack(rest[info_bytes:])
    if stored != zlib.crc32(fixed + info):
        raise FormatError("header checksum mismatch")
    columns = tuple(c for i, c in enumerate(COLUMNS) if mask >> i & 1)
    header = Header(info, chunk_size, length, group_chunks, columns, version)
    try:
        header.check()
    except ValueError as e:
        raise FormatError(f"impossible header values: {e}") from None
    if mask >> len(COLUMNS):
        raise FormatError(f"unknown columns in the header ({mask:#x})")
    return header


def _version_message(version: int) -> str:
    if version > VERSION:
        return (
            f"unsupported container version {version} (this reader reads {_READABLE}): made by "
            "a newer release"
        )
    return (
        f"unsupported container version {version} (this reader reads {_READABLE}): "
        f"streams of versions 1 (rANS) to {READABLE_VERSIONS[0] - 1} decode only with the "
        "release that wrote them (version 3: its coder's floats came from one program per "
        "group, 4's from one per block)"
    )


class ContainerReader:
    """Reads a container group by group, validating everything before it is used.

    Args:
      file: a seekable binary file positioned at the start of the container.
      max_payload_bytes: the most bytes a coded chunk can take (`LMCoder.capacity_bytes`).

    Raises:
      FormatError: any problem with the header, or counts the file's size cannot hold.
    """

    def __init__(self, file: BinaryIO, max_payload_bytes: int | None = None):
        self._file = file
        start = file.tell()
        self.header = read_header(file)
        body = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(body)
        need = self.header.num_groups * MIN_GROUP_BYTES + _TRAILER.size
        if end - body < need:
            raise FormatError(
                f"truncated or forged: {self.header.num_chunks} chunks in "
                f"{self.header.num_groups} groups need at least {need} bytes after the header, "
                f"the file has {end - body} (of {end - start})"
            )
        self.max_payload_bytes = max_payload_bytes
        self._body = body
        self._scan(end)

    def _scan(self, end: int) -> None:
        """Walks the groups' length blocks (skipping payloads) so that a truncated, padded or
        forged file fails here, before any decoding."""
        h = self.header
        for g in range(h.num_groups):
            first = g * h.group_chunks
            count = min(h.group_chunks, h.num_chunks - first)
            where = f"group {g} (chunks {first}-{first + count - 1})"
            source = _Source(self._file)
            skip = _column_sum(source, count, f"lengths of {where}", h.chunk_size_bytes)
            for name in h.columns[1:]:
                _column_sum(source, count, f"{name}s of {where}", MAX_CHUNK_SIZE_BYTES)
            skip += 2 * _U32.size
            if self._file.tell() + skip > end:
                raise FormatError(f"truncated {where}: the file ends inside it")
            self._file.seek(skip, os.SEEK_CUR)
        left = end - self._file.tell()
        if left < _TRAILER.size:
            raise FormatError("truncated trailer (the original's sha256)")
        if left > _TRAILER.size:
            raise FormatError(f"trailing garbage: {left - _TRAILER.size} bytes after the trailer")
        self._file.seek(self._body)

    def groups(self) -> Iterator["Group"]:
        """Yields each group, after checking its lengths and checksum; then reads the trailer."""
        for g in range(self.header.num_groups):
            yield self._read_group(g)
        self._read_trailer()

    def _read_group(self, g: int) -> "Group":
        h = self.header
        first = g * h.group_chunks
        count = min(h.group_chunks, h.num_chunks - first)
        lengths = [h.chunk_length_bytes(i) for i in range(first, first + count)]
        source = _Source(self._file)
        where = f"group {g} (chunks {first}-{first + count - 1})"
        limit = max(h.chunk_size_bytes, self.max_payload_bytes or 0)
        columns = {
            name: _read_column(source, count, f"{name}s of {where}", limit) for name in h.columns
        }
        for n, size in zip(lengths, columns["length"], strict=True):
            if size > n:  # a coded payload is shorter than its chunk, a raw one as long
                raise FormatError(f"impossible lengths in {where}: {size} bytes for a chunk of {n}")
        payloads = [source.read(n, f"payloads of {where}") for n in columns["length"]]
        crcs = self._file.read(2 * _U32.size)
        if len(crcs) != 2 * _U32.size:
            raise FormatError(f"truncated {where}: its checksums are missing")
        stored, original_crc = struct.unpack("<II", crcs)
        if stored != source.crc:
            raise FormatError(f"checksum mismatch in {where}: the file is corrupted there")
        chunks = [
            Chunk(
                first + i,
                n,
                payload,
                raw=len(payload) == n,
                symbols=columns["symbols"][i] if "symbols" in columns else n,
                mode=columns["mode"][i] if "mode" in columns else 0,
            )
            for i, (payload, n) in enumerate(zip(payloads, lengths, strict=True))
        ]
        return Group(g, chunks, original_crc, where)

    def _read_trailer(self) -> None:
        trailer = self._file.read(_TRAILER.size)
        if len(trailer) != _TRAILER.size:
            raise FormatError("truncated trailer (the original's sha256)")
        digest, crc = _TRAILER.unpack(trailer)
        if crc != zlib.crc32(digest):
            raise FormatError("trailer checksum mismatch")
        if self._file.read(1):
            raise FormatError("trailing garbage after the trailer")
        self.original_sha256 = digest

    def verify_original(self, sha256_digest: bytes) -> None:
        """Checks the digest of all decoded data (call after `groups()` is exhausted).

        Raises:
          FormatError: the digests differ.
        """
        if bytes(sha256_digest) != self.original_sha256:
            raise FormatError("decoded data does not match the stored sha256")


# ---------------------------------------------------------------------------------------------
# The stream's description.


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """What decoding a stream needs to match or reproduce: the header's `info`, as JSON.

    Attributes:
      model: the model's fingerprint (hex sha256).
      coder: the coder's shape and settings (lanes, chunk_tokens, precision_bits, ...).
      environment: what fixes the model's floats on the encoder (jax version, backend, device,
        CPU features, numerics-relevant XLA flags); compared before decoding.
    """

    model: str
    coder: dict[str, Any]
    environment: dict[str, Any]

    def pack(self) -> bytes:
        data = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        if len(data) > MAX_INFO_BYTES:
            raise ValueError(f"the stream's description takes {len(data)} bytes, over 1024")
        return data.encode()

    @classmethod
    def unpack(cls, info: bytes) -> "StreamInfo":
        """Raises FormatError unless `info` is a StreamInfo's JSON."""
        try:
            fields = json.loads(info)
            result = cls(fields["model"], dict(fields["coder"]), dict(fields["environment"]))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"not a stream made by compress.py (its description: {e})") from None
        return result


# ---------------------------------------------------------------------------------------------
# Output files.

PARTIAL_SUFFIX = ".partial"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_partials(path: str | os.PathLike) -> list[str]:
    """Hidden partial files a killed run left next to `path` (`.NAME.xxxx.partial`)."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    pattern = f".{glob.escape(name)}.*{PARTIAL_SUFFIX}"
    return sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Opens a temporary file next to `path`; on success fsyncs it and renames it to `path`.

    The temporary file is readable by its owner only until it is complete (it may hold part of a
    decoded original); stale ones from killed runs are removed first. On an exception, SIGTERM
    or SIGINT it is deleted, so `path` appears only complete.

    Yields:
      A binary file opened for writing.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    for stale in stale_partials(path):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    fd, temp_path = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=PARTIAL_SUFFIX, dir=directory
    )  # mkstemp makes it 0600: owner only while incomplete
    try:
        with _signals_raise(), os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_path, 0o666 & ~_current_umask())
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


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM raises KeyboardInterrupt while the block runs (SIGINT already does), so that a
    killed compress or decompress removes its partial output on the way out."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def spool(file: BinaryIO) -> BinaryIO:
    """A seekable copy of a pipe (standard input), in a temporary file deleted on close."""
    if file.seekable():
        return file
    copy = tempfile.TemporaryFile()
    while block := file.read(1 << 20):
        copy.write(block)
    copy.seek(0)
    return copy
