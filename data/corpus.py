"""Byte corpora by name: the embedded default, enwik8/enwik9, and any local file.

`load_corpus` returns the corpus as a read-only uint8 array (memory-mapped for files, so enwik9
costs no RAM). `split` cuts it at fixed offsets into train / valid / test; with the default 5% + 5%
enwik8 gives the usual 90M / 5M / 5M bytes.

The embedded default `pydocs` needs no download: it is the Python Language Reference and library
topic pages that every CPython installation ships as `pydoc_data.topics` (about 0.5 MB of English
technical prose and grammar, written by people). Its exact bytes depend on the Python release, so
runs record the corpus's sha256.
"""

import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

import numpy as np

DEFAULT_CORPUS = "pydocs"
_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteCorpus:
    """A corpus fetched once as a zip and cached, checked by size and sha256 of its content."""

    name: str
    url: str
    member: str
    num_bytes: int
    sha256: str


# The Large Text Compression Benchmark's files (first 1e8 / 1e9 bytes of a 2006 Wikipedia dump).
REMOTE = {
    "enwik8": RemoteCorpus(
        "enwik8",
        "http://mattmahoney.net/dc/enwik8.zip",
        "enwik8",
        100_000_000,
        "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
    ),
    "enwik9": RemoteCorpus(
        "enwik9",
        "http://mattmahoney.net/dc/enwik9.zip",
        "enwik9",
        1_000_000_000,
        "159b85351e5f76e60cbe32e04c677847a9ecba3adc79addab6f4c6c7aa3744bc",
    ),
}


class CorpusError(ValueError):
    """A corpus is missing, unreachable or not the expected bytes."""


def pydocs_bytes() -> bytes:
    """Returns the embedded default corpus (see the module docstring)."""
    from pydoc_data import topics  # part of the standard library

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics)).encode("utf-8")


def default_cache_dir() -> pathlib.Path:
    """$LMC_DATA_DIR, else ~/.cache/lmcompress."""
    return pathlib.Path(os.environ.get("LMC_DATA_DIR") or "~/.cache/lmcompress").expanduser()


def sha256_file(path: os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _check(path: pathlib.Path, spec: RemoteCorpus) -> None:
    size = path.stat().st_size
    if size != spec.num_bytes:
        raise CorpusError(
            f"{path} has {size:,} bytes, but {spec.name} has {spec.num_bytes:,}: "
            "delete it and let the loader fetch it again, or point to the right file."
        )
    got = sha256_file(path)
    if got != spec.sha256:
        raise CorpusError(
            f"sha256 mismatch for {path}: got {got}, expected {spec.sha256} ({spec.name}). "
            "The file is corrupt or a different version: delete it and fetch it again."
        )


def _download(spec: RemoteCorpus, target: pathlib.Path, timeout_s: float = 30.0) -> None:
    """Downloads spec.url, extracts spec.member to `target` atomically, verifies it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        zip_path = pathlib.Path(tmp) / "download.zip"
        try:
            with (
                urllib.request.urlopen(spec.url, timeout=timeout_s) as r,
                open(zip_path, "wb") as f,
            ):
                shutil.copyfileobj(r, f, _CHUNK_BYTES)
        except (urllib.error.URLError, OSError) as e:
            raise CorpusError(
                f"Could not download {spec.name} from {spec.url} ({e}). Without network, put the "
                f"unzipped file at {target} (or pass --config.data.path=FILE), or use the "
                f"embedded default corpus '{DEFAULT_CORPUS}', which needs no download."
            ) from e
        try:
            with zipfile.ZipFile(zip_path) as z, z.open(spec.member) as src:
                partial = pathlib.Path(tmp) / spec.member
                with open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK_BYTES)
        except (zipfile.BadZipFile, KeyError) as e:
            raise CorpusError(f"{spec.url} is not a zip holding {spec.member!r}: {e}") from e
        _check(partial, spec)
        os.replace(partial, target)


def fetch(spec: RemoteCorpus, cache_dir: os.PathLike | str = "") -> pathlib.Path:
    """Returns the path of a verified local copy of `spec`, downloading it if absent.

    Raises:
      CorpusError: the download failed (the message says how to proceed offline) or the bytes
        are not the expected ones.
    """
    target = pathlib.Path(cache_dir or default_cache_dir()) / spec.member
    if target.exists():
        stamp = target.with_suffix(".verified")
        if not (stamp.exists() and stamp.read_text() == f"{target.stat().st_size} {spec.sha256}"):
            _check(target, spec)
            stamp.write_text(f"{target.stat().st_size} {spec.sha256}")
        return target
    _download(spec, target)
    return target


def _memmap(path: pathlib.Path) -> np.ndarray:
    if not path.is_file():
        raise CorpusError(f"No such file: {path}")
    if path.stat().st_size == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


def load_corpus(name: str = DEFAULT_CORPUS, path: str = "", cache_dir: str = "") -> np.ndarray:
    """Returns a corpus as a read-only uint8 array [num_bytes].

    Args:
      name: 'pydocs' (embedded), 'enwik8', 'enwik9', or 'file:PATH'.
      path: a local file; overrides `name`. For enwik8/9 it is checked against the known sha256
        when its name is enwik8/enwik9.
      cache_dir: where downloads are kept ('' -> $LMC_DATA_DIR or ~/.cache/lmcompress).

    Raises:
      CorpusError: unknown name, missing file, failed download or checksum mismatch.
    """
    if name.startswith("file:"):
        name, path = "", name[len("file:") :]
    if path:
        p = pathlib.Path(path).expanduser()
        if p.name in REMOTE and p.is_file():
            _check(p, REMOTE[p.name])
        return _memmap(p)
    if name == DEFAULT_CORPUS:
        data = np.frombuffer(pydocs_bytes(), dtype=np.uint8)
        return data
    if name in REMOTE:
        return _memmap(fetch(REMOTE[name], cache_dir))
    raise CorpusError(
        f"Unknown corpus {name!r}: choose one of {[DEFAULT_CORPUS, *REMOTE]} or 'file:PATH'."
    )


def split(data: np.ndarray, valid_fraction: float = 0.05, test_fraction: float = 0.05):
    """Cuts `data` at fixed offsets into (train, valid, test) views.

    Raises:
      CorpusError: the fractions are out of range or the corpus is too small for three parts.
    """
    if not (
        0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1
    ):
        raise CorpusError(f"Bad split fractions: valid={valid_fraction}, test={test_fraction}.")
    n = len(data)
    num_test = int(round(n * test_fraction))
    num_valid = int(round(n * valid_fraction))
    num_train = n - num_valid - num_test
    if min(num_train, num_valid, num_test) <= 0:
        raise CorpusError(f"A corpus of {n} bytes is too small to split into train/valid/test.")
    return data[:num_train], data[num_train : num_train + num_valid], data[num_train + num_valid :]
