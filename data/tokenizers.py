"""Tokenizers by name. Every tokenizer maps bytes to int32 ids and back exactly."""

import numpy as np


class ByteTokenizer:
    """The identity on bytes: 256 ids, one per byte value."""

    name = "bytes"
    vocab_size = 256

    def encode(self, data: bytes | np.ndarray) -> np.ndarray:
        """Returns ids [len(data)] int32 (an array view is kept as uint8 until needed)."""
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int32)

    def encode_array(self, data: np.ndarray) -> np.ndarray:
        """Ids for a uint8 array without copying (uint8 ids; cast per batch)."""
        return data

    def decode(self, ids: np.ndarray) -> bytes:
        return np.asarray(ids, dtype=np.uint8).tobytes()


TOKENIZERS = {"bytes": ByteTokenizer}


def get_tokenizer(name: str):
    """Returns a tokenizer by name.

    Raises:
      ValueError: unknown name.
    """
    if name not in TOKENIZERS:
        raise ValueError(f"Unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}.")
    return TOKENIZERS[name]()
