"""Compressors by name, and the paper's 7-bit compatibility modes.

`COMPRESSORS` maps each name to its constructor; its keys are the allowed values of
`--config.compressors` (comma separated). `lm:RUN_DIR` names a trained model (a train.py
workdir), built by `language_model.LanguageModelCompressor`, and `hf:PATH` a pretrained model on
disk in the Hugging Face layout (`pretrained_model.PretrainedCompressor`); several may be given.

| name | what |
|---|---|
| `gzip`, `lzma`, `zstd`, `bzip2`, `brotli` | general-purpose byte compressors |
| `png`, `png_patch` | 8-bit grayscale PNG, the reference's 32-wide shape / the patch's own |
| `flac` | 8-bit mono 16 kHz FLAC |
| `lm:RUN_DIR` | a byte-level Transformer with the range coder (imports JAX when used) |
| `hf:PATH` | a pretrained Llama-family or GPT-2 checkpoint and its tokenizer (imports JAX) |
| `online:SIZE` | a model that learns while it codes the whole dataset as one stream (imports JAX) |

7-bit modes (`SEVEN_BIT`). The paper's models read ASCII only, so its evaluation masked the data
to 7 bits and rescaled the result; the reference code does:

* `ascii` (its choice for enwik9): every byte >= 128 gets its top bit zeroed; each such byte
  counts one "missed" bit.
* `shift` (its choice for images, audio and random data): every byte is halved (`b >> 1`),
  keeping the coarse structure; every byte counts one missed bit.

The compressor codes the masked bytes; its length is then scaled by
8n / (8n - missed bits) for n raw bytes, i.e. extrapolated as if the dropped bits cost as much as
the kept ones (x 8/7 for `shift`). Both modes are lossy, so such rates are not of lossless
compression. `paper` picks by the source's modality (`data.sources`): `ascii` for text, `shift`
for images, audio and binary data (random bytes, anything else), as the paper does. A `file:`
source's modality comes from its content (`data.sources.detect_modality`: UTF-8 or printable
ASCII is text), so enwik5 saved to a file is masked like enwik9, not shifted. `none`, the default,
codes all 8 bits losslessly.
"""

from collections.abc import Callable

import numpy as np

from compressors import classical

COMPRESSORS: dict[str, Callable] = dict(classical.CLASSICAL)


def _lm(workdir: str, **kwargs):
    from compressors import language_model  # imports JAX

    return language_model.LanguageModelCompressor(workdir, **kwargs)


def _hf(model_dir: str, **kwargs):
    from compressors import pretrained_model  # imports JAX

    return pretrained_model.PretrainedCompressor(model_dir, **kwargs)


def _online(size: str, **kwargs):
    from compressors import online  # imports JAX

    return online.OnlineCompressor(size, **kwargs)


COMPRESSORS["lm"] = _lm
COMPRESSORS["hf"] = _hf
COMPRESSORS["online"] = _online


def model_compressor(name: str) -> type:
    """The compressor class of a model entry (`lm:RUN_DIR` or `hf:PATH`), by its kind
    (`model_names.parse`): what the evaluator asks of a model is the class's (its `NAME` in
    `COMPRESSORS`, `options`, `check`, `identity`, `COUNTS`, `record_fields`). Imports JAX.

    Raises:
      ValueError: a prefix without its path.
    """
    from compressors import language_model, model_names, online, pretrained_model

    kind, _ = model_names.parse(name)
    classes = {
        "run": language_model.LanguageModelCompressor,
        "hf": pretrained_model.PretrainedCompressor,
        "online": online.OnlineCompressor,
    }
    return classes[kind]


def parse_names(spec: str) -> list[str]:
    """Splits a comma-separated list and checks each name (`lm:RUN_DIR`, `hf:PATH` included).

    Raises:
      ValueError: an unknown name, a model entry without its directory, or an empty list.
    """
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("No compressors given: e.g. --config.compressors=gzip,lzma,lm:RUN_DIR.")
    for name in names:
        if name in classical.CLASSICAL:
            continue
        from compressors import model_names  # imports JAX: not for classical names

        if model_names.is_model(name):
            model_names.parse(name)  # a prefix without its path fails, naming what it needs
        else:
            raise ValueError(
                f"Unknown compressor {name!r}: choose from {list(classical.CLASSICAL)}, "
                "lm:RUN_DIR (a train.py workdir) or hf:PATH (a Hugging Face model directory)."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"Compressors listed twice in {spec!r}.")
    return names


def mask_ascii(data: bytes) -> tuple[bytes, int]:
    """Zeroes the top bit of every non-ASCII byte; returns (bytes, number of bits zeroed)."""
    array = np.frombuffer(data, np.uint8)
    high = array >= 0x80
    return (array & 0x7F).tobytes(), int(high.sum())


def shift_right(data: bytes) -> tuple[bytes, int]:
    """Halves every byte (drops its lowest bit); returns (bytes, number of bits dropped)."""
    return (np.frombuffer(data, np.uint8) >> 1).tobytes(), len(data)


SEVEN_BIT = {"none": None, "ascii": mask_ascii, "shift": shift_right}
PAPER_SEVEN_BIT = {"text": "ascii"}  # image, audio, binary: 'shift'


def seven_bit_mode(mode: str, modality: str) -> str:
    """Resolves `mode` ('none', 'ascii', 'shift' or 'paper') for a source's modality.

    Raises:
      ValueError: unknown mode.
    """
    if mode == "paper":
        return PAPER_SEVEN_BIT.get(modality, "shift")
    if mode not in SEVEN_BIT:
        raise ValueError(f"seven_bit must be one of {[*SEVEN_BIT, 'paper']}, got {mode!r}.")
    return mode


def seven_bit_scale(raw_bytes: int, missed_bits: int) -> float:
    """The paper's factor on the compressed length: 8n / (8n - missed bits)."""
    total_bits = 8 * raw_bytes
    return total_bits / (total_bits - missed_bits) if total_bits else 1.0
