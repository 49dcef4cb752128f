r"""Tokens per second of pretrained-model compressors (`hf:PATH`): the log-loss (forward) pass,
and the coded path's encode and decode, with the paper's top-k tables and the whole vocabulary.

  python bench/pretrained_throughput.py                        # two tiny checkpoints it writes
  python bench/pretrained_throughput.py --model_dirs=/path/to/Llama-2-7b-hf --chunks=64

Without `--model_dirs` it writes a tiny GPT-2 (byte-level BPE tokenizer) and a tiny Llama (GQA,
SentencePiece with byte fallback) with random weights, the shapes of the tests'
(`tests/hf_fixtures.py`) but wider, into a temporary folder. Each figure is timed on a second run
(the first compiles). Text: `--chunks` chunks of `--chunk_size` bytes of the embedded corpus's
held-out part. The decode figure decodes what the encode wrote and checks it.
"""

import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_DIRS = flags.DEFINE_list("model_dirs", [], "Hugging Face model directories (default: tiny).")
_CHUNKS = flags.DEFINE_integer("chunks", 16, "Chunks of text to rate.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 256, "Bytes per chunk.")
_LANES = flags.DEFINE_integer("lanes", 16, "Pieces coded together.")
_TOP_K = flags.DEFINE_list("top_k", ["100", "0"], "Top-k settings to time (0: full vocabulary).")
_OUT = flags.DEFINE_string("out", "", "Append JSON lines here too.")


def tiny_models(root: pathlib.Path) -> list[pathlib.Path]:
    """A GPT-2 and a Llama with random weights (width 128, 2 layers, 512-token context)."""
    from tests import hf_fixtures as fx

    gpt2, llama = root / "tiny-gpt2", root / "tiny-llama"
    config = fx.gpt2_config(vocab_size=1024, n_positions=512, n_embd=128, n_head=4)
    fx.write_model(gpt2, config, fx.random_weights(config, seed=0))
    fx.write_bpe_tokenizer(gpt2, vocab_size=1024)
    config = fx.llama_config(
        vocab_size=1024, hidden_size=128, intermediate_size=344, max_position_embeddings=512
    )
    fx.write_model(llama, config, fx.random_weights(config, seed=1))
    fx.write_sentencepiece(llama, vocab_size=1024)
    return [gpt2, llama]


def _timed(fn):
    fn()  # compiles
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure(model_dir: pathlib.Path, chunks: list[bytes], top_k: int) -> dict:
    """Tokens per second of the three passes for one model and top-k."""
    from compressors import pretrained_model
    from models import lm_coder

    hf = pretrained_model.PretrainedCompressor(
        model_dir, top_k=top_k, lanes=_LANES.value, rows=_LANES.value
    )
    pieces = [p for c in chunks for p in hf.tokenize(c).pieces]
    tokens = sum(map(len, pieces))
    stats, loss_s = _timed(lambda: hf.log_loss(iter(chunks)))
    coded, encode_s = _timed(lambda: hf.code(iter(chunks), chunk_size=_CHUNK_SIZE.value))
    coder = hf.coder(bucket := min(hf.max_tokens, _CHUNK_SIZE.value + 1))
    assert max(map(len, pieces)) <= bucket, "a piece needs the context-sized coder"
    encoded = list(coder.encode_chunks(pieces))

    def decode():
        streams = [(c.payload, c.num_tokens, None) for c in encoded]
        return list(coder.decode_chunks(streams))

    decoded, decode_s = _timed(decode)
    assert all((d == p).all() for d, p in zip(decoded, pieces, strict=True))
    return {
        "model": model_dir.name,
        "model_type": hf.model.config.model_type,
        "num_params": hf.num_params,
        "top_k": top_k,
        "tokens": tokens,
        "bytes": sum(map(len, chunks)),
        "bytes_per_token": sum(map(len, chunks)) / tokens,
        "log_loss_tokens_per_s": tokens / loss_s,
        "encode_tokens_per_s": tokens / encode_s,
        "decode_tokens_per_s": tokens / decode_s,
        "log_loss_bits_per_byte": stats["ideal_bits"] / sum(map(len, chunks)),
        "coded_bits_per_byte": 8 * coded["coded_bytes"] / sum(map(len, chunks)),
        "escapes": coded["escapes"],
        "lanes": _LANES.value,
        "steps_per_token": lm_coder.LMCoder(hf.model, None, coder.shape).steps_per_token,
    }


def main(argv):
    del argv
    from data import sources

    source = sources.get_source("pydocs:heldout", sources.SourceOptions())
    chunks = list(source.chunks(_CHUNKS.value, _CHUNK_SIZE.value))
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [pathlib.Path(d) for d in _DIRS.value] or tiny_models(pathlib.Path(tmp))
        for model_dir in dirs:
            for k in map(int, _TOP_K.value):
                row = measure(model_dir, chunks, k)
                print(json.dumps(row), flush=True)
                if _OUT.value:
                    with open(_OUT.value, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    app.run(main)
