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

Sharded (`compressors.shards`): `--shard=I/N` rates shard I of N (every N-th chunk from the I-th;
the classical unchunked streams in shard 0) into WORKDIR/shards/I-of-N/, saving its progress
after every `--config.shard_group` chunks and resuming from there when run again (SIGTERM or
SIGUSR1 stops it after saving, with exit status 75). `--mode=slurm --shards=N [--slurm.*]`
checks the config as a run does, then submits the N shards as one Slurm job array (requeued on
preemption); `--mode=status --shards=N` shows each shard; `--mode=gather --shards=N` merges N
complete shards into WORKDIR/results.jsonl and results.csv and prints the table.
"""

import pathlib
import sys

from absl import app, flags

import cli
import runs
from analysis import tables
from cluster import slurm
from compressors import evaluation, shards


def main(argv):
    cli.no_arguments(argv)
    FLAGS = flags.FLAGS  # noqa: N806
    workdir = FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    if FLAGS.mode != "run" and FLAGS.shard:
        raise app.UsageError(f"--shard=I/N runs one shard here: leave out --mode={FLAGS.mode}.")
    if FLAGS.mode == "run" and FLAGS.shards:
        raise app.UsageError("--shards=N goes with --mode=slurm, status or gather.")
    cli.quiet_logging()
    config = FLAGS.config
    if FLAGS.mode == "slurm":
        options = slurm.SlurmOptions.from_dict(slurm.given_flags(FLAGS))
        submission = shards.submit(
            config, workdir, FLAGS.shards, options, sys.argv[1:], FLAGS.python
        )
        print(f"Submitted job array {submission.job_id}: {FLAGS.shards} shards "
              f"({submission.state_file.parent}).")  # fmt: skip
        print("Watch: the same command with --mode=status; then merge with --mode=gather.")
        return
    if FLAGS.mode == "status":
        print(shards.format_status(shards.status(config, workdir, FLAGS.shards)))
        return
    if FLAGS.mode == "gather":
        records = shards.gather(config, workdir, FLAGS.shards)
    elif FLAGS.shard:
        index, count = shards.parse_shard(FLAGS.shard)
        try:
            records = evaluation.evaluate_shard(config, workdir, index, count)
        except evaluation.ShardStopped as e:
            print(f"eval_compress.py: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_status)
        if evaluation.hosts()[0] == 0:
            path = evaluation.shard_dir(workdir, index, count) / evaluation.RESULTS_JSONL
            print(f"Shard {index}-of-{count}: {len(records)} records in {path}")
        return
    else:
        records = evaluation.evaluate(config, workdir)
    if evaluation.hosts()[0] == 0:
        path = pathlib.Path(workdir) / evaluation.RESULTS_JSONL
        shown = runs.read_jsonl(path) if FLAGS.all else records
        print(tables.format_table(shown))
        print(f"Records: {path} and {path.with_name(evaluation.RESULTS_CSV)}")


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", cli.repo_path("configs/eval.py"), "Evaluation config."
    )
    flags.DEFINE_string("workdir", None, "Output directory for results.jsonl / results.csv.")
    flags.DEFINE_bool("all", False, "Show every record in --workdir, not only this run's.")
    flags.DEFINE_enum(
        "mode", "run", ["run", "slurm", "status", "gather"],
        "run: rate here (one shard with --shard); slurm: submit --shards; status; gather.",
    )  # fmt: skip
    flags.DEFINE_string("shard", "", "I/N: rate shard I of N here (into WORKDIR/shards/I-of-N).")
    flags.DEFINE_integer("shards", 0, "N, the number of shards (--mode=slurm, status, gather).")
    flags.DEFINE_string("python", sys.executable, "Interpreter the Slurm shards use.")
    slurm.define_flags()


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags)
