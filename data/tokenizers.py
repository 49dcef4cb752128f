"""Tokenizers by name: `bytes` (the default) and `bpe:N`. Every one maps bytes to ids and back
exactly, for any bytes (invalid UTF-8 included).

`bpe:N` is byte-level BPE with N ids trained by the `tokenizers` library on the training split.
Bytes are read as Latin-1 characters (a bijection between the 256 byte values and U+0000..U+00FF),
so the base alphabet is exactly the 256 bytes, no normaliser touches them, and decoding joins the
tokens' characters and writes them back as Latin-1. Pre-tokenisation splits before spaces, so
merges stay within words, as in the paper's BPE runs. A trained tokenizer is saved with the run
(`tokenizer.json`) and loaded from there on resume and by the tools that use the run.
"""

import os
import pathlib
import re

import numpy as np

_ENCODE_PIECE_CHARS = 1 << 16  # encode long inputs in pieces (cut at spaces) for batching


class ByteTokenizer:
    """The identity on bytes: 256 ids, one per byte value."""

    name = "bytes"
    vocab_size = 256
    token_bytes = np.ones(256, np.int64)  # bytes each id stands for

    def encode(self, data: bytes | np.ndarray) -> np.ndarray:
        """Returns ids [len(data)] int32."""
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int32)

    def encode_array(self, data: np.ndarray) -> np.ndarray:
        """Ids for a uint8 array without copying (uint8 ids; batches cast them)."""
        return data

    def decode(self, ids: np.ndarray) -> bytes:
        return np.asarray(ids, dtype=np.uint8).tobytes()


class BPETokenizer:
    """Byte-level BPE (see the module docstring)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.name = f"bpe:{self.vocab_size}"
        self._strings = [tokenizer.id_to_token(i) for i in range(self.vocab_size)]
        self.token_bytes = np.array([len(s) for s in self._strings], np.int64)

    @classmethod
    def train(cls, data: bytes | np.ndarray, vocab_size: int) -> "BPETokenizer":
        """Trains on `data` (bytes or a uint8 array).

        Raises:
          ValueError: vocab_size below 256 (the byte alphabet) or above 65,536.
        """
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        if not 256 <= vocab_size <= 65_536:
            raise ValueError(f"bpe vocab size must lie in [256, 65536], got {vocab_size}.")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^ ]+| +"), behavior="isolated")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=[chr(i) for i in range(256)],
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(_pieces(_as_text(data)), trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: os.PathLike) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: os.PathLike) -> None:
        self._tok.save(str(path))

    def encode(self, data: bytes | np.ndarray) -> np.ndarray:
        """Returns ids [num_tokens] int32."""
        pieces = self._tok.encode_batch(list(_pieces(_as_text(data))))
        ids = [np.asarray(p.ids, np.int32) for p in pieces]
        return np.concatenate(ids) if ids else np.zeros(0, np.int32)

    encode_array = encode

    def decode(self, ids: np.ndarray) -> bytes:
        return "".join(self._strings[i] for i in np.asarray(ids).tolist()).encode("latin-1")


def _as_text(data: bytes | np.ndarray) -> str:
    return (data.tobytes() if isinstance(data, np.ndarray) else bytes(data)).decode("latin-1")


def _pieces(text: str):
    """Cuts text into pieces of about 64K characters, before a space, so no word is split."""
    start = 0
    while start < len(text):
        end = start + _ENCODE_PIECE_CHARS
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        yield text[start:end]
        start = end


TOKENIZERS = {"bytes": ByteTokenizer, "bpe:N": BPETokenizer}
_BPE = re.compile(r"bpe:(\d+)")


def get_tokenizer(name: str, train_data=None, cache_path: os.PathLike | None = None):
    """Returns a tokenizer by name ('bytes' or 'bpe:N').

    For `bpe:N`, loads `cache_path` if it exists, else trains on `train_data` and saves it there.

    Raises:
      ValueError: unknown name, or a BPE tokenizer that is neither cached nor trainable, or a
        cached one of another size.
    """
    if name == "bytes":
        return ByteTokenizer()
    match = _BPE.fullmatch(name)
    if not match:
        raise ValueError(f"Unknown tokenizer {name!r}; use 'bytes' or 'bpe:N' (e.g. bpe:1024).")
    vocab_size = int(match.group(1))
    path = pathlib.Path(cache_path) if cache_path else None
    if path is not None and path.exists():
        tok = BPETokenizer.load(path)
        if tok.vocab_size != vocab_size:
            raise ValueError(f"{path} holds a tokenizer of {tok.vocab_size} ids, not {name}.")
        return tok
    if train_data is None:
        raise ValueError(f"{name} is not trained: no {path} and no training data given.")
    tok = BPETokenizer.train(train_data, vocab_size)
    if tok.vocab_size != vocab_size:
        raise ValueError(
            f"BPE training reached only {tok.vocab_size} ids of {vocab_size} on this data."
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
    return tok
