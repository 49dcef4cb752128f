r"""Compression rates of classical compressors and trained models on one dataset (Table 1).

  python eval_compress.py --config=configs/eval.py --workdir=/tmp/eval    # pydocs, gzip + LZMA2
  python eval_compress.py --config=configs/eval.py --config.dataset=enwik9 \
      --config.compressors=gzip,lzma,png,flac,lm:runs/200K,lm:runs/3.2M --workdir=results
  python eval_compress.py --config=configs/eval.py --config.dataset=images \
      --config.compressors=gzip,lzma,png,png_patch,flac,zstd,bzip2,brotli --workdir=results

Datasets are `data.sources` specs, compressors `compressors.COMPRESSORS` names; a trained model is
`lm:RUN_DIR` (a train.py workdir), a pretrained one on disk `hf:PATH` (its protocol and options:
compressors/pretrained_model.py and `--config.hf.*`). Each (compressor, dataset, chunking) gives one
record, appended to WORKDIR/results.jsonl and results.csv (a record with the same compressor,
dataset, chunking, chunk size, chunk count and 7-bit mode replaces the older one), and the table of
every record in WORKDIR is printed, datasets as columns, as in the paper's Table 1. A record is
reused instead of rated again only while it is of the same data (a `file:` source's sha256, in
`dataset_sha256`), the same model (`model_sha256`: for `lm:` the checkpoint `lm_step` and its
parameters, the fingerprint compress.py writes into its streams; for `hf:` the checkpoint's
files) and the same settings (`passes`, `dtype`, `top_k`, ...; on the float path the coder's
`lanes` and `attention_blocks`); the run says how many it reused and when they were made
(`created`), and `--config.overwrite=True` rates everything again. `--config.dtype` is every
model's compute dtype ('' keeps the model's own: a run's, float32 for `hf:`), `--config.lm.lanes`
the coder's chunks per group (0: as many as the device's memory holds, 64 on a CPU, as
compress.py's `--lanes=0`); records hold the values these resolve to.

Accounting (Deletang et al., 2024, and its reference code):
* raw rate = compressed / raw bytes; adjusted rate = (compressed + 2 bytes x parameters) / raw
  (0 parameters for classical compressors); bits per byte = 8 x compressed / raw.
* Chunked classical compressors code each chunk on its own, and the container overhead is
  counted once: the length of one compressed zero byte (`classical.header_bytes`) is subtracted
  for every chunk but the first. Unchunked, the whole dataset is one stream.
* A model codes each chunk on its own and is charged every byte its coder writes (the range
  coder's payload, about 0.3 bytes above the ideal per chunk, no header), next to its log-loss
  (sum of -log2 p / 8).
* The 7-bit modes (`--config.seven_bit`) are described in `compressors/__init__.py`.
* seconds: time spent compressing, summed over the workers for chunked classical compressors
  (the reference's running time), the wall clock of the log-loss and coded passes for models.

Work is spread out: classical chunked compression over `workers` processes, unchunked streams in
threads, model chunks over all local devices (`compressors.language_model`); with several hosts
each takes every process_count-th chunk for the models and totals are summed across hosts
(classical compressors run on host 0). The evaluator itself is `compressors.evaluation`.
"""

import pathlib

from absl import app, flags

import cli
import runs
from analysis import tables
from compressors import evaluation


def main(argv):
    cli.no_arguments(argv)
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    cli.quiet_logging()
    records = evaluation.evaluate(flags.FLAGS.config, workdir)
    if evaluation.hosts()[0] == 0:
        path = pathlib.Path(workdir) / evaluation.RESULTS_JSONL
        shown = runs.read_jsonl(path) if flags.FLAGS.all else records
        print(tables.format_table(shown))
        print(f"Records: {path} and {path.with_name(evaluation.RESULTS_CSV)}")


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", cli.repo_path("configs/eval.py"), "Evaluation config."
    )
    flags.DEFINE_string("workdir", None, "Output directory for results.jsonl / results.csv.")
    flags.DEFINE_bool("all", False, "Show every record in --workdir, not only this run's.")


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags)
