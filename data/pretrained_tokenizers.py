"""Pretrained tokenizers (Hugging Face `tokenizer.json` or SentencePiece `tokenizer.model`) and
the byte protocol that makes any chunk of bytes their input, losslessly.

Loading: `tokenizer.json` through the `tokenizers` library if present, else `tokenizer.model`
through `sentencepiece`. Text is encoded WITHOUT added special tokens (no BOS/EOS templates);
special-token strings that occur in the text itself are kept as the tokenizer parses them, and
the round-trip check below covers them.

BOS (`PretrainedTokenizer.bos_token_id`): config.json's `bos_token_id`, else
tokenizer_config.json's `bos_token` looked up in the vocabulary, else None. GPT-2's is
`<|endoftext|>` (50256). With None the model has no start token and the first token of a
sequence is coded under a uniform distribution over the model's vocabulary
(`models.pretrained.PretrainedNet` with `start_token=None`).

Byte protocol, per chunk (`encode_chunk` / `decode_chunk`; the mode is one small int per chunk
that the container must store):

* `MODE_UTF8` (0): the chunk is valid UTF-8 and is tokenized as that text.
* `MODE_LATIN1` (1): it is not; each byte becomes the Latin-1 character of the same value
  (U+0000..U+00FF, a bijection), and that text is tokenized.
* In both, the encoder checks `detokenize(tokenize(text)) == text`. If it fails (a normaliser
  such as NFKC, unknown characters, collapsed whitespace), the chunk falls back to
  `MODE_BYTE_TOKENS` (2): one token per byte, using the tokenizer's own byte tokens (the 256
  base symbols of a byte-level BPE, or SentencePiece's `<0x00>`..`<0xFF>` byte-fallback
  pieces), exact by construction; the model codes them like any tokens.
* `MODE_RAW` (3): the fallback when the tokenizer has no byte tokens. The ids are the byte
  values themselves (0..255), NOT model tokens: the caller must store or code them without the
  model (e.g. 8 bits per byte).

The paper's 7-bit setting (`compressors.SEVEN_BIT`, 'ascii' or 'shift') masks the bytes before
they reach this module; bytes below 128 are valid UTF-8, so such chunks take `MODE_UTF8` (or a
fallback if the tokenizer does not reproduce, e.g., control characters).

Chunks longer than the model's context in tokens are split by `split_tokens` into consecutive
pieces of at most `max_tokens`, never truncated. Each piece is coded as its own sequence (start
token, then the piece, at positions from 0). The split is implied by the chunk's token count,
which the container records: `num_pieces(num_tokens, max_tokens)` pieces, all full but the last.
The decoder concatenates the pieces' ids before `decode_chunk`, so a split never falls inside
a character.
"""

import hashlib
import json
import os
import pathlib

import numpy as np

MODE_UTF8 = 0
MODE_LATIN1 = 1
MODE_BYTE_TOKENS = 2
MODE_RAW = 3
MODE_NAMES = {
    MODE_UTF8: "utf8",
    MODE_LATIN1: "latin1",
    MODE_BYTE_TOKENS: "byte_tokens",
    MODE_RAW: "raw",
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte value -> the printable character standing for it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


class _HFBackend:
    """`tokenizers.Tokenizer` loaded from tokenizer.json."""

    def __init__(self, path: pathlib.Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


class _SentencePieceBackend:
    """`sentencepiece.SentencePieceProcessor` loaded from tokenizer.model."""

    def __init__(self, path: pathlib.Path):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int, add_bos=False, add_eos=False)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None


class PretrainedTokenizer:
    """A pretrained tokenizer with the byte protocol (see the module docstring).

    Attributes:
      vocab_size: ids the tokenizer may produce (added tokens included).
      bos_token_id: the start token, or None.
      byte_token_ids: int32 [256] the id standing for each byte value, or None.
      fingerprint: sha256 of the tokenizer file (decoding needs the same tokenizer).
      path: the tokenizer file.
    """

    def __init__(self, backend, bos_token_id: int | None, path: pathlib.Path):
        self._backend = backend
        self.vocab_size = backend.vocab_size
        self.bos_token_id = bos_token_id
        self.path = path
        self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
        self.byte_token_ids = _byte_tokens(backend)
        if self.byte_token_ids is not None:
            self._byte_of_id = {int(i): b for b, i in enumerate(self.byte_token_ids)}

    def encode_text(self, text: str) -> np.ndarray:
        """Returns int32 [num_tokens] ids of `text`, without added special tokens."""
        return np.asarray(self._backend.encode(text), np.int32)

    def decode_text(self, ids) -> str:
        """Returns the text of ids [num_tokens] (special tokens kept)."""
        return self._backend.decode(np.asarray(ids, np.int64).tolist())

    def encode_chunk(self, data: bytes) -> tuple[np.ndarray, int]:
        """Tokenizes one chunk of any bytes losslessly.

        Args:
          data: the chunk.

        Returns:
          (ids int32 [num_tokens], mode): `decode_chunk(ids, mode) == data`. For `MODE_RAW` the
          ids are byte values, not model tokens.
        """
        data = bytes(data)
        try:
            text, mode = data.decode("utf-8"), MODE_UTF8
        except UnicodeDecodeError:
            text, mode = data.decode("latin-1"), MODE_LATIN1
        ids = self.encode_text(text)
        if self.decode_text(ids) == text:
            return ids, mode
        raw = np.frombuffer(data, np.uint8)
        if self.byte_token_ids is not None:
            return self.byte_token_ids[raw], MODE_BYTE_TOKENS
        return raw.astype(np.int32), MODE_RAW

    def decode_chunk(self, ids, mode: int) -> bytes:
        """Inverse of `encode_chunk`.

        Args:
          ids: int [num_tokens] (a split chunk's pieces concatenated).
          mode: the chunk's mode.

        Returns:
          The chunk's bytes.

        Raises:
          ValueError: an unknown mode, or ids that this mode cannot have produced (corruption).
        """
        ids = np.asarray(ids, np.int64)
        if mode == MODE_UTF8:
            return self.decode_text(ids).encode("utf-8")
        if mode == MODE_LATIN1:
            try:
                return self.decode_text(ids).encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("latin1 chunk decodes to characters above U+00FF") from None
        if mode == MODE_BYTE_TOKENS and self.byte_token_ids is not None:
            try:
                return bytes(self._byte_of_id[int(i)] for i in ids)
            except KeyError as e:
                raise ValueError(
                    f"byte_tokens chunk holds id {e.args[0]}, not a byte token"
                ) from None
        if mode == MODE_RAW:
            if ids.size and (ids.min() < 0 or ids.max() > 255):
                raise ValueError("raw chunk holds values outside [0, 255]")
            return ids.astype(np.uint8).tobytes()
        raise ValueError(f"unknown chunk mode {mode} for this tokenizer ({MODE_NAMES})")

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """Raises ValueError unless every id this tokenizer emits is below the model's vocab."""
        if self.vocab_size > model_vocab_size:
            raise ValueError(
                f"the tokenizer has {self.vocab_size} ids but the model only {model_vocab_size}: "
                "they do not belong together"
            )


def _byte_tokens(backend) -> np.ndarray | None:
    """The ids of the 256 byte tokens, or None if the vocabulary lacks them.

    Tries SentencePiece-style byte-fallback pieces `<0xNN>`, then GPT-2's byte-level alphabet.
    """
    for spell in (lambda b: f"<0x{b:02X}>", _bytes_to_unicode().__getitem__):
        ids = [backend.token_to_id(spell(b)) for b in range(256)]
        if all(i is not None for i in ids) and len(set(ids)) == 256:
            return np.asarray(ids, np.int32)
    return None


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _bos_token_id(model_dir: pathlib.Path, backend) -> int | None:
    """config.json's bos_token_id, else tokenizer_config.json's bos_token, else None."""
    bos = _read_json(model_dir / "config.json").get("bos_token_id")
    if isinstance(bos, list):
        bos = bos[0] if bos else None
    if bos is not None:
        return int(bos)
    token = _read_json(model_dir / "tokenizer_config.json").get("bos_token")
    if isinstance(token, dict):
        token = token.get("content")
    return backend.token_to_id(token) if isinstance(token, str) else None


def load_tokenizer(model_dir: os.PathLike) -> PretrainedTokenizer:
    """Loads the tokenizer of a Hugging Face model directory.

    Args:
      model_dir: holds tokenizer.json (preferred) or tokenizer.model, and config.json.

    Returns:
      The tokenizer with its BOS and byte tokens resolved.

    Raises:
      FileNotFoundError: neither tokenizer file exists.
    """
    model_dir = pathlib.Path(model_dir)
    path = tokenizer_file(model_dir)
    backend = _HFBackend(path) if path.name == "tokenizer.json" else _SentencePieceBackend(path)
    return PretrainedTokenizer(backend, _bos_token_id(model_dir, backend), path)


def tokenizer_file(model_dir: os.PathLike) -> pathlib.Path:
    """The tokenizer file of a model directory: tokenizer.json, else tokenizer.model.

    Raises:
      FileNotFoundError: neither exists.
    """
    for name in ("tokenizer.json", "tokenizer.model"):
        if (pathlib.Path(model_dir) / name).is_file():
            return pathlib.Path(model_dir) / name
    raise FileNotFoundError(
        f"{model_dir}: no tokenizer.json or tokenizer.model (SentencePiece) to tokenize with"
    )


def num_pieces(num_tokens: int, max_tokens: int) -> int:
    """Pieces a chunk of `num_tokens` is split into (at least 1, for an empty chunk)."""
    return max(1, -(-num_tokens // max_tokens))


def split_tokens(ids, max_tokens: int) -> list[np.ndarray]:
    """Splits a chunk's ids into consecutive pieces of at most `max_tokens` (all full but the last).

    Args:
      ids: int [num_tokens].
      max_tokens: the model's context in tokens.

    Returns:
      `num_pieces(num_tokens, max_tokens)` int32 arrays whose concatenation is `ids`.

    Raises:
      ValueError: max_tokens < 1.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    ids = np.asarray(ids, np.int32)
    count = num_pieces(len(ids), max_tokens)
    return [ids[i * max_tokens : (i + 1) * max_tokens] for i in range(count)]
