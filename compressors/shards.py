r"""A sharded evaluation: N shards of eval_compress.py's work, run anywhere, merged exactly.

  python eval_compress.py --config=configs/eval.py ... --workdir=OUT --shard=I/N   # one shard
  python eval_compress.py --config=configs/eval.py ... --workdir=OUT --mode=slurm --shards=N
  python eval_compress.py --config=configs/eval.py ... --workdir=OUT --mode=status --shards=N
  python eval_compress.py --config=configs/eval.py ... --workdir=OUT --mode=gather --shards=N

Shard I of N rates every N-th chunk of the dataset from the I-th (interleaved, after
`num_chunks` has cut the dataset), so the N shards hold every chunk once whatever N; the
classical compressors' unchunked stream (one stream over the whole dataset) is rated by shard 0
alone. A shard keeps its records in OUT/shards/I-of-N/results.jsonl and its progress, saved
after every group of `--config.shard_group` chunks, in progress.json next to it
(`compressors.evaluation.evaluate_shard`): killed, preempted or requeued, it resumes from the
last group, with the same sums as a run that was never stopped.

`submit` sends the N shards to Slurm as one job array (`cluster.slurm`: each shard's log in
OUT/shards/I-of-N/slurm/, requeued when a shard stops on SIGUSR1 or SIGTERM and exits with 75);
`status` says where each stands; `gather` merges N complete shards into the usual records of
OUT/results.jsonl and results.csv (`evaluation.merge_shards`: the same compressed bytes and chunk
counts as one process, log-loss to float rounding).

Imports no JAX at its top, as `compressors.evaluation`.
"""

import os
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

import cli
import compressors
import runs
from cluster import slurm
from compressors import evaluation

SCRIPT = "eval_compress.py"
# The flags of eval_compress.py that say how to run, not what to rate: a shard's command
# line leaves them out.
_RUN_FLAGS = ("mode", "shards", "shard", "python", "slurm")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N).

    Raises:
      ValueError: not I/N with 0 <= I < N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard={text}: give I/N, shard I of N (0 <= I < N), e.g. 0/4.")
    return int(match[1]), int(match[2])


def check_count(count: int | None, mode: str) -> int:
    """--shards for a mode that needs it.

    Raises:
      ValueError: missing or below 1.
    """
    if not count or count < 1:
        raise ValueError(f"--mode={mode} needs --shards=N (N >= 1): the number of shards.")
    return count


def shard_name(index: int, count: int) -> str:
    return f"{index}-of-{count}"


def shard_argv(argv: Sequence[str], index: int, count: int, extra: Sequence[str] = ()):
    """A shard's command line from eval_compress.py's: the same flags (what to rate and where)
    without those that say how to run (--mode, --shards, --slurm.*, --python), with
    --shard=I/N, `extra` and progress bars off (the shard writes a log)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name.split(".", 1)[0] in _RUN_FLAGS:
            skip = "=" not in arg  # '--mode slurm': its value is the next argument
            continue
        kept.append(arg)
    if not any(a.lstrip("-").startswith("config.progress") for a in kept):
        kept.append("--config.progress=False")
    return [*kept, *extra, f"--shard={index}/{count}"]


def submit(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    count: int,
    options: slurm.SlurmOptions,
    argv: Sequence[str],
    python: str = sys.executable,
) -> slurm.Submission:
    """Checks `config` as a local run does before any work, then submits its `count` shards
    as one Slurm job array (one task per shard, run in the current directory).

    Args:
      argv: eval_compress.py's arguments (after the program's name), of which each shard's
        command line is made (`shard_argv`).

    Raises:
      ValueError: a bad config (one line, as a local run says it).
      cluster.slurm.SlurmUnavailable, SlurmError: nothing was submitted.
    """
    check_count(count, "slurm")
    evaluation.prepare(config, split=True)
    if config.shard_group < 1:
        raise ValueError(f"--config.shard_group={config.shard_group} must be at least 1.")
    extra = []
    if options.num_tasks > 1 and not any("config.distributed" in a for a in argv):
        extra.append("--config.distributed=True")
    script = cli.repo_path(SCRIPT)
    todo = []
    for index in range(count):
        command = [python, script, *shard_argv(argv, index, count, extra)]
        directory = evaluation.shard_dir(workdir, index, count)
        todo.append((shard_name(index, count), command, directory))
    script_dir = pathlib.Path(workdir) / evaluation.SHARDS_DIR / slurm.LOG_DIR
    return slurm.submit_array(todo, options, script_dir, cwd=os.getcwd())


def _required(config, names: list[str], index: int) -> list[tuple[str, list[str], str]]:
    return evaluation.shard_entries(config, names, index)


def _shard_progress(config, names, workdir, index: int, count: int) -> dict[str, Any]:
    """A shard's state from its files: 'complete', 'partial' or 'new', and what it has done."""
    directory = evaluation.shard_dir(workdir, index, count)
    progress = evaluation.read_progress(directory)
    entries = progress.get("entries", {})
    expected = progress.get("expected_chunks")
    done, current = [], ""
    for name, _, _ in _required(config, names, index):
        entry = entries.get(name)
        if entry is not None and entry["done"] and _fits(config, entry["key"]):
            done.append(name)
        elif not current:
            reached = entry["next"] if entry is not None and _fits(config, entry["key"]) else 0
            of = f"/{expected}" if expected and name != "classical unchunked" else ""
            current = f"{name}: {reached}{of} chunks"
    required = len(_required(config, names, index))
    if len(done) == required:
        state = "complete"
        chunks = max((e["next"] for e in entries.values()), default=0)
        what = f"{len(done)} of {required} rated, {chunks} chunks"
    else:
        state = "partial" if entries else "new"
        what = f"{len(done)} of {required} rated; {current}"
    return {"state": state, "done": what}


def _fits(config, key: dict) -> bool:
    """Whether an entry's key agrees with what `config` asks (the parts known without loading
    a model: chunk count and size)."""
    return key.get("num_chunks") == config.num_chunks and all(
        identity.get("chunk_size") == config.chunk_size
        for identity in key.get("identities", {}).values()
    )


def status(config, workdir: str | os.PathLike, count: int) -> list[dict[str, Any]]:
    """One row per shard: state (new / partial / queued / running / complete / failed), what
    it has done (entries rated, chunks reached) and why it is queued or failed (the shard's own
    last error line)."""
    check_count(count, "status")
    names = compressors.parse_names(config.compressors)
    script_dir = pathlib.Path(workdir) / evaluation.SHARDS_DIR / slurm.LOG_DIR
    state_files = slurm.submissions(script_dir) if script_dir.is_dir() else []
    jobs = slurm.query(state_files) if state_files else {}
    rows = []
    for index in range(count):
        name = shard_name(index, count)
        row = {"shard": name, **_shard_progress(config, names, workdir, index, count)}
        row["reason"] = ""
        job = jobs.get(name)
        if job is not None and (row["state"] != "complete" or job.state in ("queued", "running")):
            row["state"], row["reason"] = job.state, job.reason
            if row["state"] == "complete":  # exited 0 with work left: another configuration?
                row["state"] = "failed"
                row["reason"] = "exited 0 with work left: submitted with other settings?"
        rows.append(row)
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """The status rows as an aligned table."""
    width = max(len("shard"), *(len(r["shard"]) for r in rows))
    done = max(len("done"), *(len(r["done"]) for r in rows))
    lines = [f"{'shard':<{width}}  {'state':<8}  {'done':<{done}}  reason"]
    for r in rows:
        lines.append(f"{r['shard']:<{width}}  {r['state']:<8}  {r['done']:<{done}}  {r['reason']}")
    return "\n".join(lines).rstrip()


def gather(config, workdir: str | os.PathLike, count: int) -> list[dict[str, Any]]:
    """Merges the `count` complete shards of `config` into WORKDIR/results.jsonl and .csv.

    Returns:
      The merged records, as a single run of `config` makes them (plus `shards`).

    Raises:
      ValueError: one line naming every shard that is missing or incomplete, or shards that
        rated different models, data or settings.
    """
    check_count(count, "gather")
    names = compressors.parse_names(config.compressors)
    shards, problems = [], []
    for index in range(count):
        directory = evaluation.shard_dir(workdir, index, count)
        records = runs.read_jsonl(directory / evaluation.RESULTS_JSONL)
        have = {
            (r["compressor"], r["chunking"]): r for r in records if _fits(config, r["shard"]["key"])
        }
        missing = [
            f"{n} {chunking}"
            for _, members, chunking in _required(config, names, index)
            for n in members
            if (n, chunking) not in have
        ]
        if not directory.exists():
            problems.append(f"{shard_name(index, count)} (missing)")
        elif missing:
            problems.append(f"{shard_name(index, count)} (lacks {', '.join(missing)})")
        shards.append([have[(n, c)] for _, members, c in _required(config, names, index)
                       for n in members if (n, c) in have])  # fmt: skip
    if problems:
        raise ValueError(
            f"Cannot gather {count} shards of {workdir}: {'; '.join(problems)} not complete "
            "(--mode=status shows them)."
        )
    keys: dict[tuple, dict] = {}
    for index, records in enumerate(shards):
        for record in records:
            first = keys.setdefault((record["compressor"], record["chunking"]), record)
            if record["shard"]["key"] != first["shard"]["key"]:
                changed = ", ".join(
                    evaluation.changed_paths(first["shard"]["key"], record["shard"]["key"])
                )
                raise ValueError(
                    f"Cannot gather {workdir}: {record['compressor']} of shard "
                    f"{shard_name(index, count)} rated other {changed} than shard "
                    f"{shard_name(first['shard']['index'], count)}: rate it again "
                    f"(--shard={index}/{count} --config.overwrite=True)."
                )
    merged = evaluation.merge_shards(config, shards)
    order = {name: i for i, name in enumerate(names)}
    merged.sort(key=lambda r: (order[r["compressor"]], r["chunking"] != "chunked"))
    evaluation.save(workdir, merged)
    return merged
