"""Evaluation data by name: each source yields fixed-size `bytes` chunks (2048 bytes by default).

A source is named by a spec `NAME` or `NAME:ARG` (`SOURCES` holds the names):

| spec | chunks | default count |
|---|---|---|
| `pydocs[:PART]` | the embedded text corpus (`data.corpus`), no download; PART: see below | all |
| `enwik9` | first 1e9 bytes of enwik9, consecutive | 488,281 (the paper's 1 GB) |
| `enwik8`, `enwik7` | first 1e8 / 1e7 bytes of enwik8 (itself enwik9's first 1e8 bytes) | all |
| `imagenet[:SPLIT]` | tfds `imagenet2012` (split `train` by default), grayscale patches | 488,281 |
| `librispeech[:SPLIT]` | tfds `librispeech` (split `train_clean100`), 8-bit samples | 488,281 |
| `images[:PATH]` | grayscale patches of an image file or of a directory's images | all |
| `audio[:PATH]` | 8-bit samples of a WAV/FLAC file or of a directory's files | all |
| `random` | seeded uniform bytes | 488,281 |
| `file:PATH` | any local file, consecutive; the last chunk may be shorter | all |

Each source has a modality, which picks the paper's 7-bit mode (`compressors.seven_bit_mode`):
`text`, `image`, `audio`, or `binary` (random bytes, anything else). A `file:` source's modality
is decided by its content (`detect_modality`) unless `SourceOptions.modality` names it: text if
its first 64 KiB are UTF-8 (or at least 95% printable ASCII) without NUL bytes and with at most
1% other control characters; else image or audio by the file's header (PNG, JPEG, GIF, BMP,
TIFF, WebP; WAV, FLAC, Ogg, MP3) or suffix; else binary. An image or audio file is rated as the
bytes it stores (e.g. JPEG-compressed), not as the pixels or samples `images` and `audio` cut.

`pydocs:PART` is one part of train.py's default 90/5/5 split of that corpus: `train`, `valid`,
`test`, or `heldout` (valid + test, the last 10%), so trained models can be rated on unseen text.

Images follow the paper: grayscale is the mean of R, G and B rounded down (the reference's
`np.mean(image, -1).astype(np.uint8)`, computed here in integers: `(r + g + b) // 3`), cut into
non-overlapping patches of 32 rows of `chunk_size // 32` pixels (32x64 for 2048 bytes), patch rows
then patch columns, each patch's pixels row-major, images in the dataset's order; partial patches
at the right and bottom edges are dropped. Audio follows the paper's 16 -> 8-bit conversion
(`pcm16_to_uint8`); each recording is cut on its own and its last partial chunk dropped.

Offline defaults. `images` with no path reads the one real photograph the installed packages ship,
matplotlib's `mpl-data/sample_data/grace_hopper.jpg` (512x600 RGB, 144 patches). `audio` with no
path reads a real speech recording that the auditok 0.2.0 wheel ships (MIT licence; pinned in
requirements.txt, as auditok 0.4 and later no longer ship it):
`auditok/data/1to6arabic_16000_mono_bc_noise.wav`, which auditok's `dataset` module describes as
"a pronunciation of Arabic numbers from 1 to 6" (its `bc_noise` presumably marks the audible
background noise; no further origin is documented). It is 18.8 s of 16-bit mono at 16 kHz,
LibriSpeech's rate: 146 chunks of 2048 bytes, about two thirds of them the noisy pauses between
the words. scipy's and CPython's test WAVs are synthetic tones and plucks, so they are not
used. For more audio, pass a path, e.g. a LibriSpeech FLAC file or an extracted
`LibriSpeech/train-clean-100` directory (files in sorted path order). `imagenet` and `librispeech`
need the optional `tensorflow-datasets` (with `tensorflow`), imported only inside their loaders.
"""

import dataclasses
import importlib.util
import itertools
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from data import corpus

CHUNK_SIZE_BYTES = 2048
PAPER_NUM_CHUNKS = 488_281  # The paper's 1 GB: floor(1e9 / 2048) chunks.
PATCH_ROWS = 32
AUDIO_SUFFIXES = (".flac", ".wav")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_DEFAULT_IMAGE = "mpl-data/sample_data/grace_hopper.jpg"  # inside the matplotlib package
_DEFAULT_AUDIO = "data/1to6arabic_16000_mono_bc_noise.wav"  # inside the auditok 0.2.0 package
_ENWIK_PREFIX_BYTES = {"enwik7": 10_000_000, "enwik8": 100_000_000, "enwik9": 1_000_000_000}


class SourceError(ValueError):
    """A source is unknown, missing, or lacks an optional dependency (the message says which)."""


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """Where sources find their data.

    Attributes:
      path: a local enwik8/enwik9 file for the enwik sources (checked by sha256).
      cache_dir: where enwik8/9 are downloaded ('' -> $LMC_DATA_DIR or ~/.cache/lmcompress).
      tfds_data_dir: tensorflow-datasets data_dir ('' -> its default, ~/tensorflow_datasets).
      manual_dir: where the ImageNet tars are ('' -> tfds's default manual dir).
      tfds_download: let tfds download and prepare datasets that are not prepared yet.
      seed: seed of the `random` source.
      modality: a `file:` source's modality, one of `MODALITIES`; 'auto' (or '') decides it
        from the file's content (`detect_modality`). Other sources have a fixed modality.
    """

    path: str = ""
    cache_dir: str = ""
    tfds_data_dir: str = ""
    manual_dir: str = ""
    tfds_download: bool = True
    seed: int = 0
    modality: str = "auto"


@dataclasses.dataclass(frozen=True)
class Source:
    """A named stream of chunks.

    Attributes:
      name: the spec it was made from (recorded in results).
      modality: 'text', 'image', 'audio' or 'binary' (picks the paper's 7-bit mode).
      default_num_chunks: chunks yielded when no count is given; None for all of them.
      make_chunks: (chunk_size_bytes, num_chunks or None) -> iterator over chunks.
    """

    name: str
    modality: str
    default_num_chunks: int | None
    make_chunks: Callable[[int, int | None], Iterator[bytes]]

    def chunks(self, num_chunks: int = 0, chunk_size_bytes: int = CHUNK_SIZE_BYTES):
        """Returns an iterator over the first `num_chunks` chunks (0: the source's default).

        Raises:
          SourceError: a fixed-size source holds fewer chunks than asked for, or a bad size.
        """
        if chunk_size_bytes < 1:
            raise SourceError(f"chunk size must be >= 1 byte, got {chunk_size_bytes}.")
        return self.make_chunks(chunk_size_bytes, num_chunks or self.default_num_chunks)


def _take(chunks: Iterator[bytes], num_chunks: int | None) -> Iterator[bytes]:
    return chunks if num_chunks is None else itertools.islice(chunks, num_chunks)


def _array_chunks(data: np.ndarray, name: str, keep_partial: bool):
    """Chunks of a uint8 array at fixed offsets; asking for more than it holds is an error."""

    def make(chunk_size: int, num_chunks: int | None) -> Iterator[bytes]:
        available = (len(data) + (chunk_size - 1 if keep_partial else 0)) // chunk_size
        if num_chunks is not None and num_chunks > available:
            raise SourceError(
                f"{name} holds {available:,} chunks of {chunk_size} bytes, fewer than the "
                f"{num_chunks:,} asked for: lower --config.num_chunks (0 takes them all)."
            )
        count = available if num_chunks is None else num_chunks
        return (bytes(data[i * chunk_size : (i + 1) * chunk_size]) for i in range(count))

    return make


PYDOCS_PARTS = ("", "train", "valid", "test", "heldout")


def _pydocs(arg: str, options: SourceOptions) -> Source:
    """The whole corpus, or one part of train.py's default 90/5/5 split ('heldout': valid+test)."""
    if arg not in PYDOCS_PARTS:
        raise SourceError(f"pydocs:{arg}: the part must be one of {', '.join(PYDOCS_PARTS[1:])}.")
    data = corpus.load_corpus(corpus.DEFAULT_CORPUS)
    if arg:
        train, valid, test = corpus.split(data)
        data = {"train": train, "valid": valid, "test": test}.get(arg, data[len(train) :])
    name = f"pydocs:{arg}" if arg else "pydocs"
    return Source(name, "text", None, _array_chunks(data, name, keep_partial=False))


def _enwik(name: str) -> Callable[[str, SourceOptions], Source]:
    """enwik9, or a prefix of enwik8: an enwik8 file, else the head of a local enwik9 copy."""

    def make(arg: str, options: SourceOptions) -> Source:
        prefix = _ENWIK_PREFIX_BYTES[name]
        parent = "enwik9" if name == "enwik9" else "enwik8"
        local_enwik9 = pathlib.Path(options.cache_dir or corpus.default_cache_dir()) / "enwik9"
        if options.path:
            data = corpus.load_corpus(parent, options.path)
        elif parent == "enwik8" and local_enwik9.exists() and not _cached(parent, options):
            data = corpus.load_corpus("enwik9", cache_dir=options.cache_dir)  # same first 1e8
        else:
            data = corpus.load_corpus(parent, cache_dir=options.cache_dir)
        if len(data) < prefix:
            raise SourceError(f"{name} needs {prefix:,} bytes, the file has {len(data):,}.")
        default = PAPER_NUM_CHUNKS if name == "enwik9" else None
        return Source(name, "text", default, _array_chunks(data[:prefix], name, False))

    return make


def _cached(name: str, options: SourceOptions) -> bool:
    return (pathlib.Path(options.cache_dir or corpus.default_cache_dir()) / name).exists()


MODALITIES = ("auto", "text", "image", "audio", "binary")
MODALITY_SAMPLE_BYTES = 65_536  # detect_modality reads this much of the head
# File headers (text is ruled out first, so short ones such as BMP's 'BM' are safe).
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\0",
    b"MM\0*",
)
_AUDIO_MAGIC = (b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3")  # MP3: ID3 or a frame
_TEXT_CONTROLS = (9, 10, 11, 12, 13, 27)  # tab, newlines, vertical tab, form feed, escape


def _is_text(head: bytes, truncated: bool) -> bool:
    """UTF-8 (or >= 95% printable ASCII) without NUL and with <= 1% other control bytes."""
    array = np.frombuffer(head, np.uint8)
    if not len(array) or (array == 0).any():
        return False
    control = ((array < 0x20) & ~np.isin(array, _TEXT_CONTROLS)) | (array == 0x7F)
    if control.mean() > 0.01:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        # A multi-byte character cut by the end of the sample is still text.
        if truncated and e.reason == "unexpected end of data" and e.start >= len(head) - 3:
            return True
    printable = ((array >= 0x20) & (array < 0x7F)) | np.isin(array, _TEXT_CONTROLS)
    return printable.mean() >= 0.95  # e.g. Latin-1 text with a few accented letters


def detect_modality(data: bytes | np.ndarray, path: str = "") -> str:
    """The modality of a file's bytes: 'text', 'image', 'audio' or 'binary'.

    Text first (see the module docstring; tested on the first `MODALITY_SAMPLE_BYTES`), then an
    image or audio header, then the suffix of `path`; anything else is 'binary'.
    """
    head = bytes(data[:MODALITY_SAMPLE_BYTES])
    if _is_text(head, truncated=len(data) > len(head)):
        return "text"
    riff = head[8:12] if head.startswith(b"RIFF") else b""
    if head.startswith(_IMAGE_MAGIC) or riff == b"WEBP":
        return "image"
    if head.startswith(_AUDIO_MAGIC) or riff == b"WAVE":
        return "audio"
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return "binary"


def _file(arg: str, options: SourceOptions) -> Source:
    if not arg:
        raise SourceError("file needs a path: file:PATH.")
    path = pathlib.Path(arg).expanduser()
    if not path.is_file():
        raise SourceError(f"No such file: {path} (source file:{arg}).")
    data = corpus.load_corpus(path=str(path))
    modality = options.modality
    if modality in ("", "auto"):
        modality = detect_modality(data, str(path))
    return Source(f"file:{arg}", modality, None, _array_chunks(data, f"file:{arg}", True))


def _random(arg: str, options: SourceOptions) -> Source:
    seed = int(arg) if arg else options.seed

    def make(chunk_size: int, num_chunks: int | None) -> Iterator[bytes]:
        rng = np.random.default_rng(seed)
        return (rng.bytes(chunk_size) for _ in range(num_chunks))

    return Source("random", "binary", PAPER_NUM_CHUNKS, make)


# --- Images -------------------------------------------------------------------------------------


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Returns the paper's grayscale [height, width] uint8 of a [height, width(, channels)] image.

    The mean of the red, green and blue channels rounded down (an alpha channel is ignored), which
    equals the reference's float mean cast to uint8. One-channel images are returned as they are.

    Raises:
      SourceError: not a uint8 image.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise SourceError(f"expected a uint8 [h, w] or [h, w, c] image, got {image.dtype}.")
    if image.ndim == 2 or image.shape[-1] == 1:
        return image.reshape(image.shape[:2])
    return (image[..., :3].astype(np.uint16).sum(-1) // 3).astype(np.uint8)


def image_patches(gray: np.ndarray, chunk_size: int = CHUNK_SIZE_BYTES) -> Iterator[bytes]:
    """Yields the non-overlapping patches of 32 rows x chunk_size/32 pixels of `gray` [h, w].

    Patch rows then patch columns, pixels row-major inside a patch; the edges that do not fill a
    whole patch are dropped.

    Raises:
      SourceError: `chunk_size` is not a multiple of 32.
    """
    if chunk_size % PATCH_ROWS:
        raise SourceError(f"image chunks are 32 rows: chunk size {chunk_size} is not a multiple.")
    rows, cols = PATCH_ROWS, chunk_size // PATCH_ROWS
    height, width = gray.shape
    for r in range(height // rows):
        for c in range(width // cols):
            yield gray[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols].tobytes()


def _read_image(path: pathlib.Path) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib.

    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image)


def _list_files(path: pathlib.Path, suffixes: tuple[str, ...], what: str) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
        if files:
            return files
        raise SourceError(f"{path} holds no {what} files ({', '.join(suffixes)}).")
    raise SourceError(f"No such file or directory: {path}.")


def _package_file(package: str, relative: str) -> pathlib.Path | None:
    """The data file `relative` inside an installed package (located, not imported), or None."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec else None
    path = pathlib.Path(locations[0]) / relative if locations else None
    return path if path and path.is_file() else None


def _path_or_default(arg: str, package: str, relative: str, missing: str) -> pathlib.Path:
    """`arg` as a path, or the default data file `relative` that `package` ships.

    Raises:
      SourceError: no `arg` and the package lacks the file (`missing` says what to do).
    """
    if arg:
        return pathlib.Path(arg).expanduser()
    path = _package_file(package, relative)
    if path is None:
        raise SourceError(missing)
    return path


def _images(arg: str, options: SourceOptions) -> Source:
    path = _path_or_default(
        arg,
        "matplotlib",
        _DEFAULT_IMAGE,
        f"matplotlib's sample image {_DEFAULT_IMAGE} is missing: pass images:PATH.",
    )
    files = _list_files(path, IMAGE_SUFFIXES, "image")

    def make(chunk_size: int, num_chunks: int | None) -> Iterator[bytes]:
        patches = (
            patch
            for f in files
            for patch in image_patches(to_grayscale(_read_image(f)), chunk_size)
        )
        return _take(patches, num_chunks)

    return Source(f"images:{arg}" if arg else "images", "image", None, make)


# --- Audio --------------------------------------------------------------------------------------


def pcm16_to_uint8(samples: np.ndarray) -> np.ndarray:
    """Reduces signed 16-bit samples to unsigned 8-bit ones, exactly as the paper's code does.

    The reference applies `audioop.lin2lin(x, 2, 1)`, which keeps each sample's most significant
    byte, i.e. floor(x / 256) in [-128, 127], then `audioop.bias(y, 1, 128)`, which adds 128
    modulo 256. So the byte is floor(x / 256) + 128 (the high byte with its top bit flipped):
    -32768 -> 0, -1 -> 127, 0 -> 128, 32767 -> 255. Written with NumPy (`audioop` left Python
    in 3.13). The reference hands audioop the tfds array's raw buffer, which is right for the
    int16 samples tfds's `librispeech` has stored since its version 2.1.1 (checked in
    tests/tfds_definitions_test.py), but not for tfds's Audio default, int64, whose buffer
    audioop would read as four 16-bit words per sample; so this converts sample by sample, the
    evident intent, whatever the input's integer dtype.

    Args:
      samples: integer samples in [-32768, 32767], any integer dtype (tfds librispeech: int16).

    Returns:
      uint8 array of the same shape.

    Raises:
      SourceError: non-integer samples or values outside the 16-bit range.
    """
    samples = np.asarray(samples)
    if not np.issubdtype(samples.dtype, np.integer):
        raise SourceError(f"expected integer 16-bit samples, got {samples.dtype}.")
    if samples.size and (samples.min() < -32768 or samples.max() > 32767):
        raise SourceError("samples lie outside the signed 16-bit range.")
    return ((samples.astype(np.int16) >> 8) + 128).astype(np.uint8)


def audio_chunks(samples_u8: np.ndarray, chunk_size: int = CHUNK_SIZE_BYTES) -> Iterator[bytes]:
    """Yields consecutive `chunk_size`-byte chunks of one recording, dropping its partial tail."""
    for i in range(len(samples_u8) // chunk_size):
        yield samples_u8[i * chunk_size : (i + 1) * chunk_size].tobytes()


def read_audio_uint8(path: os.PathLike) -> np.ndarray:
    """Reads a WAV/FLAC file as 8-bit samples [frames] (`pcm16_to_uint8`).

    Samples are read at 16 bits (libsndfile keeps the top 16 bits of deeper formats); several
    channels are mixed to one as their mean rounded down. The sample rate is kept as it is.
    """
    import soundfile  # in requirements.txt; reads FLAC without external binaries.

    samples, _ = soundfile.read(str(path), dtype="int16", always_2d=True)
    mono = samples.astype(np.int32).sum(1) // samples.shape[1]
    return pcm16_to_uint8(mono)


def _audio(arg: str, options: SourceOptions) -> Source:
    path = _path_or_default(
        arg,
        "auditok",
        _DEFAULT_AUDIO,
        f"audio with no path reads auditok's speech recording {_DEFAULT_AUDIO}, which is "
        "missing: pip install auditok==0.2.0 (in requirements.txt; auditok 0.4 and later "
        "dropped the file), or pass audio:PATH, a WAV or FLAC file or a directory of them "
        "(e.g. an extracted LibriSpeech/train-clean-100).",
    )
    files = _list_files(path, AUDIO_SUFFIXES, "audio")

    def make(chunk_size: int, num_chunks: int | None) -> Iterator[bytes]:
        chunks = (c for f in files for c in audio_chunks(read_audio_uint8(f), chunk_size))
        return _take(chunks, num_chunks)

    return Source(f"audio:{arg}" if arg else "audio", "audio", None, make)


# --- tensorflow-datasets (optional) -------------------------------------------------------------


def _import_tfds(name: str):
    try:
        import tensorflow_datasets as tfds  # requirements.txt; TensorFlow: requirements-extra.txt
    except ImportError as e:
        raise SourceError(
            f"The {name} source reads tensorflow-datasets, which is not installed: "
            "pip install tensorflow-datasets tensorflow (see requirements-extra.txt). Offline "
            "alternatives: 'images[:PATH]' and 'audio[:PATH]'."
        ) from e
    return tfds


def _tfds_examples(tfds, name: str, split: str, options: SourceOptions, hint: str):
    """Examples of a tfds dataset in its stored order, as NumPy dicts."""
    kwargs = {}
    if options.manual_dir:
        config = tfds.download.DownloadConfig(manual_dir=options.manual_dir)
        kwargs["download_and_prepare_kwargs"] = {"download_config": config}
    try:
        dataset = tfds.load(
            name,
            split=split,
            data_dir=options.tfds_data_dir or None,
            download=options.tfds_download,
            shuffle_files=False,
            **kwargs,
        )
    except Exception as e:  # noqa: BLE001 - tfds raises many types; all mean "data missing".
        raise SourceError(f"tfds could not load {name} split {split!r} ({e}). {hint}") from e
    return tfds.as_numpy(dataset)


def _tfds_source(
    name: str, tfds_name: str, modality: str, default_split: str, hint: str, to_chunks
) -> Callable[[str, SourceOptions], Source]:
    """A source over a tfds dataset: `to_chunks(example, chunk_size)` cuts each example."""

    def make_source(arg: str, options: SourceOptions) -> Source:
        tfds = _import_tfds(name)
        split = arg or default_split

        def make(chunk_size: int, num_chunks: int | None) -> Iterator[bytes]:
            examples = _tfds_examples(tfds, tfds_name, split, options, hint)
            return _take((c for ex in examples for c in to_chunks(ex, chunk_size)), num_chunks)

        return Source(f"{name}:{arg}" if arg else name, modality, PAPER_NUM_CHUNKS, make)

    return make_source


_imagenet = _tfds_source(
    "imagenet",
    "imagenet2012",
    "image",
    "train",
    "ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar in the manual dir (--config.data.manual_dir, default "
    "~/tensorflow_datasets/downloads/manual) and tfds prepares it once.",
    lambda ex, chunk_size: image_patches(to_grayscale(ex["image"]), chunk_size),
)
_librispeech = _tfds_source(
    "librispeech",
    "librispeech",
    "audio",
    "train_clean100",
    "tfds prepares LibriSpeech with Apache Beam (pip install apache-beam; about 6 GB for "
    "train_clean100), or point --config.data.tfds_data_dir at a prepared copy. Without tfds, "
    "'audio:DIR' reads the LibriSpeech FLAC files directly.",
    lambda ex, chunk_size: audio_chunks(pcm16_to_uint8(ex["speech"]), chunk_size),
)


SOURCES: dict[str, Callable[[str, SourceOptions], Source]] = {
    "pydocs": _pydocs,
    "enwik7": _enwik("enwik7"),
    "enwik8": _enwik("enwik8"),
    "enwik9": _enwik("enwik9"),
    "imagenet": _imagenet,
    "librispeech": _librispeech,
    "images": _images,
    "audio": _audio,
    "random": _random,
    "file": _file,
}


def get_source(spec: str, options: SourceOptions | None = None) -> Source:
    """Returns the source for `spec` ('NAME' or 'NAME:ARG', NAME a key of `SOURCES`).

    Files, directories and optional dependencies are checked here, so a missing dataset fails
    before any work starts.

    Raises:
      SourceError: unknown name, missing data or dependency (the message says what to do), an
        unknown modality, or a modality given for a source other than `file:`.
      corpus.CorpusError: enwik8/9 could not be fetched or failed its checksum.
    """
    options = options or SourceOptions()
    name, _, arg = spec.partition(":")
    if name not in SOURCES:
        raise SourceError(f"Unknown dataset {spec!r}: choose one of {sorted(SOURCES)}.")
    if options.modality not in ("", *MODALITIES):
        raise SourceError(f"modality must be one of {MODALITIES}, got {options.modality!r}.")
    if options.modality not in ("", "auto") and name != "file":
        raise SourceError(
            f"A modality ({options.modality!r}) can be given for file:PATH sources only; "
            f"{name!r} has its own."
        )
    return SOURCES[name](arg, options)


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """Yields `items`, produced ahead by a background thread (at most `depth` waiting).

    Overlaps data loading with the consumer's work; an exception in the producer is re-raised
    in the consumer. Abandoning the iterator stops the producer at its next item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done, stop = object(), threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
            buffer.put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            buffer.put((done, e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass
