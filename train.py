r"""Trains a byte-level Transformer language model.

  python train.py --config=configs/default.py:size=test --workdir=/tmp/run
  python train.py --config=configs/default.py:size=3.2M,dataset=enwik8 --workdir=runs/3.2M \
      --config.train.steps=100000 --config.model.dtype=bfloat16

Re-running the same command resumes from the newest checkpoint in --workdir; a complete run is
left alone. The loop itself is `training.loop.train_loop`; this module supplies the language
modelling task (corpus, tokenizer, held-out bits per byte, the final test next to gzip and
LZMA2) and the command line.
"""

import cli  # first: a Ctrl-C while the modules below import then ends in one line

# isort: split
import copy
import gzip
import lzma
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import runs
from data import batches, corpus, tokenizers
from models import transformer
from training import loop, runtime, steps

LN2 = loop.LN2


def classical_bits_per_byte(data: bytes, window: int) -> dict[str, float]:
    """gzip -9 and LZMA2 (Python's lzma default) on the same bytes, in bits per byte.

    Three figures per compressor: `{name}_bits_per_byte` codes the whole of `data` at once (their
    best case); `{name}_chunked_bits_per_byte` codes each `window`-byte chunk on its own with
    its full container (header and trailer) every time; `{name}_chunked_header_once_bits_per_byte`
    codes the same chunks but counts the container once, as the paper and eval_compress.py do: the
    length of one compressed zero byte (`compressors.classical.header_bytes`, for the same
    settings) is subtracted for every chunk but the first. Both chunked figures are the
    in-context setting the model is rated in; the header-once one is the paper's accounting.
    """
    from compressors import classical  # no JAX; the container measure eval_compress.py uses

    codecs = {"gzip": lambda b: gzip.compress(b, 9, mtime=0), "lzma": lzma.compress}
    chunks = [data[i : i + window] for i in range(0, len(data), window)]
    out = {}
    for name, compress in codecs.items():
        chunked_bytes = sum(len(compress(c)) for c in chunks)
        header_once_bytes = chunked_bytes - classical.header_bytes(name) * (len(chunks) - 1)
        out[f"{name}_bits_per_byte"] = 8 * len(compress(data)) / len(data)
        out[f"{name}_chunked_bits_per_byte"] = 8 * chunked_bytes / len(data)
        out[f"{name}_chunked_header_once_bits_per_byte"] = 8 * header_once_bytes / len(data)
    return out


class LanguageModelTask:
    """Next-token prediction on a corpus: random training windows, held-out bits per byte.

    Args:
      config: a config from `configs/default.py`.
      workdir: the run directory (a trained tokenizer is saved there).

    Raises:
      ValueError: bad data settings (corpus.CorpusError is a ValueError).
    """

    postfix_keys = ("eval_bits_per_byte",)
    loss_mask = None

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
        self.config = config
        data = corpus.load_corpus(config.data.name, config.data.path, config.data.cache_dir)
        train_split, valid_split, test_split = corpus.split(
            data, config.data.valid_fraction, config.data.test_fraction
        )
        if config.data.train_bytes < 0 or config.data.train_bytes > len(train_split):
            raise ValueError(
                f"data.train_bytes={config.data.train_bytes} is outside [0, {len(train_split)}], "
                "the train split's size (0 trains on all of it)."
            )
        if config.data.train_bytes:
            train_split = train_split[: config.data.train_bytes]
        self.tokenizer = tokenizers.get_tokenizer(
            config.tokenizer, train_data=train_split, cache_path=f"{workdir}/{runs.TOKENIZER_FILE}"
        )
        self.vocab_size = self.tokenizer.vocab_size
        self.train_ids = self.tokenizer.encode_array(train_split)
        self.train_bytes = len(train_split)
        self.bytes_per_token = len(train_split) / max(1, len(self.train_ids))  # 1 for bytes
        self.eval_sets = {
            name: self._windows(split)
            for name, split in (("eval", valid_split), ("test", test_split))
        }
        self._eval_step = self._mesh = None

    def _windows(self, split_data) -> tuple[np.ndarray, np.ndarray, int]:
        """(windows, weights, bytes they stand for) of a held-out split's head."""
        # eval_max_bytes bounds the bytes tokenised; rates are per byte those tokens stand for.
        head = split_data[: self.config.train.eval_max_bytes]
        windows, weights = batches.eval_windows(
            self.tokenizer.encode_array(head),
            self.config.model.context_length,
            self.config.train.eval_max_bytes,
            self.config.train.batch_size,
        )
        return windows, weights, int(self.tokenizer.token_bytes[windows[weights > 0]].sum())

    def batch(self, step: int) -> np.ndarray:
        c = self.config
        return batches.sample_windows(
            self.train_ids, c.train.batch_size, c.model.context_length, c.seed, step
        )

    def compile(self, model: transformer.Transformer, mesh) -> None:
        def eval_step(params, tokens, weights):
            nll = transformer.token_nll(model.apply({"params": params}, tokens), tokens)
            return (nll.sum(axis=-1) * weights).sum()

        split = NamedSharding(mesh, P("data"))
        self._mesh = mesh
        self._eval_step = jax.jit(
            eval_step,
            in_shardings=(NamedSharding(mesh, P()), split, split),
            out_shardings=NamedSharding(mesh, P()),
        )

    def log_metrics(self, loss: float) -> dict[str, Any]:
        return {"train_bits_per_byte": loss / LN2 / self.bytes_per_token}

    def bits_per_byte(self, params, name: str) -> float:
        """Code length of a held-out split's windows in bits per original byte they cover."""
        windows, weights, num_bytes = self.eval_sets[name]
        total_nll, size = 0.0, self.config.train.batch_size
        for i in range(0, len(windows), size):
            total_nll += float(
                self._eval_step(
                    params,
                    steps.to_global(windows[i : i + size], self._mesh),
                    steps.to_global(weights[i : i + size], self._mesh),
                )
            )
        return total_nll / LN2 / num_bytes

    def evaluate(self, params) -> dict[str, Any]:
        return {"eval_bits_per_byte": self.bits_per_byte(params, "eval")}

    def test(self, params) -> dict[str, Any]:
        windows, weights, _ = self.eval_sets["test"]
        test_bytes = self.tokenizer.decode(windows[weights > 0].reshape(-1))
        window = self.config.model.context_length
        return {
            "test_bits_per_byte": self.bits_per_byte(params, "test"),
            **classical_bits_per_byte(test_bytes, window),
            "window_bytes": window,
            "test_bytes": len(test_bytes),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "train_bytes": self.train_bytes,
            "bytes_per_token": self.bytes_per_token,  # of the training split; 1 for bytes
        }


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) the language model of `config` in `workdir`.

    Args:
      config: a config from `configs/default.py`.
      workdir: run directory; holds config.json, metrics.jsonl, checkpoints/ and, once all
        train.steps are done, results.json (the returned metrics; sweep.py's completion mark).

    Returns:
      Final metrics: step, loss, num_params, eval/test bits per byte, gzip and LZMA2 bits per byte
      on the same test bytes, tokens_per_second, tokens_seen, seconds.

    Raises:
      loop.NonFiniteLossError: the loss became NaN or inf (the message names the step).
      ValueError: the config is invalid or differs from the run saved in `workdir`.
    """
    if config.data.path:  # config.json names the file trained on, not the default corpus
        config = copy.deepcopy(config)
        config.data.name = f"file:{os.path.abspath(config.data.path)}"
        config.data.path = ""
    if config.distributed:
        runtime.initialize_distributed()
    return loop.train_loop(config, workdir, LanguageModelTask)


def report(metrics: dict[str, Any]) -> str:
    """The summary printed at the end of a run: the test split next to gzip and LZMA2."""
    if "test_bits_per_byte" not in metrics:
        return loop.headline(metrics)
    w = metrics["window_bytes"]
    lines = [
        loop.headline(metrics),
        f"Held-out test split, {metrics['test_bytes']:,} bytes, in bits per byte:",
        f"  {'':10s} {f'{w}-byte windows':>16s} {'whole split':>12s}",
        f"  {'model':10s} {metrics['test_bits_per_byte']:16.3f} {'-':>12s}",
    ]
    every_window = []
    for name, key in (("gzip -9", "gzip"), ("LZMA2", "lzma")):
        chunked = metrics.get(f"{key}_chunked_header_once_bits_per_byte")
        if chunked is None:  # a run from before the header-once figure
            chunked = metrics[f"{key}_chunked_bits_per_byte"]
        lines.append(f"  {name:10s} {chunked:16.3f} {metrics[f'{key}_bits_per_byte']:12.3f}")
        every_window.append(f"{name.split()[0]} {metrics[f'{key}_chunked_bits_per_byte']:.3f}")
    lines.append(
        "Windows are coded on their own (the paper's in-context setting) and the compressors' "
        f"container is counted once, as in the paper (with it in every window: "
        f"{', '.join(every_window)}). The model's figure is its log-loss; the bytes its coder "
        "writes are about 0.3 bytes per window more (the range coder; BENCHMARKS.md)."
    )
    return "\n".join(lines)


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", cli.repo_path("configs/default.py"), "Training config."
    )
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")


if __name__ == "__main__":
    cli.run(lambda argv: runtime.train_main(argv, train, report), define_flags=_define_flags)
