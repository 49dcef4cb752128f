"""Sharded evaluation (eval_compress.py --shard, --mode=slurm/status/gather; compressors/shards.py):
N shards merge to the single-process records, resume after a stop or a kill, and run on Slurm.

The Slurm test runs against the one-node testbed (`bash cluster/testbed/start.sh`); without a
Slurm controller it skips (with LMC_REQUIRE_SLURM=1, as CI sets it, it fails), and the local
test runs the same evaluation through --shard=I/N.
"""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import compressors
import runs
import train
from cluster import slurm
from compressors import evaluation, language_model, shards
from configs import default
from configs import eval as eval_config
from tests import hf_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
REQUIRE_SLURM = os.environ.get("LMC_REQUIRE_SLURM") == "1"
CONTEXT = 64  # the test model's context and the chunk size: short, so that it rates fast
NUM_CHUNKS = 23  # not a multiple of 3 or 4: shards of different sizes
# What may differ between a merged record and a single run's: when and how fast it was made.
TIMING = {"seconds", "mb_per_s", "log_loss_seconds", "coded_seconds", "created", "shards"}
FLOATS = {"compressed_bytes", "raw_rate", "adjusted_rate", "bits_per_byte", "log_loss_bytes",
          "log_loss_rate", "coded_bytes", "table_bytes"}  # fmt: skip
ROUNDED = {"log_loss_bytes", "log_loss_rate", "table_bytes"}  # sums of floats
LM = {"lm.lanes": 2, "lm.chunks_per_device": 2, "lm.attention_blocks": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained byte-level run with a short context."""
    config = default.get_config("size=test")
    config.model.context_length = CONTEXT
    config.train.batch_size = 2
    config.train.steps = 4
    config.train.checkpoint_every = 4
    config.train.eval_every = 1000
    config.train.eval_max_bytes = CONTEXT
    config.train.progress = False
    workdir = tmp_path_factory.mktemp("run")
    train.train(config, workdir)
    return str(workdir)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("gpt2")
    config = hf_fixtures.gpt2_config(n_positions=32)
    hf_fixtures.write_model(model_dir, config, hf_fixtures.random_weights(config, seed=1))
    hf_fixtures.write_bpe_tokenizer(model_dir)
    return str(model_dir)


@pytest.fixture(scope="module", autouse=True)
def shared_models():
    """Builds each model compressor once per module, so its programs compile once."""
    built = {}
    patch = pytest.MonkeyPatch()
    for kind in ("lm", "hf"):
        constructor = compressors.COMPRESSORS[kind]

        def cached(path, constructor=constructor, **kwargs):
            key = (path, *sorted(kwargs.items()))
            if key not in built:
                built[key] = constructor(path, **kwargs)
            return built[key]

        patch.setitem(compressors.COMPRESSORS, kind, cached)
    yield
    patch.undo()


def _config(**overrides):
    config = eval_config.get_config()
    values = {"progress": False, "workers": 1, "num_chunks": NUM_CHUNKS, "chunk_size": CONTEXT,
              "shard_group": 2, **overrides}  # fmt: skip
    config.update_from_flattened_dict(values)
    return config


def _by_key(records):
    return {(r["compressor"], r["chunking"]): r for r in records}


def _assert_same(merged: dict, single: dict):
    """The merged records are the single run's: the same fields, bytes and counts exactly,
    log-loss to float rounding."""
    assert merged.keys() == single.keys()
    for key, one in single.items():
        got = merged[key]
        assert set(got) - TIMING == set(one) - TIMING, key
        for field, value in one.items():
            if field in TIMING:
                continue
            rounded = field in ROUNDED or (one.get("rate_from") == "log_loss" and field in FLOATS)
            if rounded and isinstance(value, float):
                assert got[field] == pytest.approx(value, rel=1e-9), (key, field)
            else:
                assert got[field] == value, (key, field)
        assert got["shards"] >= 1


def _shard_all(config, workdir, count):
    return [evaluation.evaluate_shard(config, workdir, i, count) for i in range(count)]


def test_shard_and_command_line_helpers():
    assert shards.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1", "-1/3", ""):
        with pytest.raises(ValueError, match="give I/N"):
            shards.parse_shard(bad)
    argv = ["--config=configs/eval.py", "--mode", "slurm", "--shards=4", "--slurm.partition=x",
            "--workdir=out", "--slurm.time_limit_minutes", "5",
            "--config.compressors=gzip"]  # fmt: skip
    assert shards.shard_argv(argv, 1, 4) == [
        "--config=configs/eval.py", "--workdir=out", "--config.compressors=gzip",
        "--config.progress=False", "--shard=1/4",
    ]  # fmt: skip


@pytest.mark.parametrize("count", [1, 3, 4])
def test_classical_shards_merge_to_the_single_run(tmp_path, count):
    # 7-bit masking on classical compressors too: the scale must apply to the totals.
    config = _config(compressors="gzip,lzma,bzip2", seven_bit="shift", seven_bit_all=True)
    single = _by_key(evaluation.evaluate(config, tmp_path / "single"))
    parts = _shard_all(config, tmp_path / "sharded", count)
    # Interleaved: shard I has chunks I, I + N, ...; the unchunked streams are shard 0's alone.
    for index, records in enumerate(parts):
        counts = {(r["compressor"], r["chunking"]): r["num_chunks"] for r in records}
        assert {c for _, c in counts} == ({"chunked", "unchunked"} if index == 0 else {"chunked"})
        assert counts[("gzip", "chunked")] == len(range(index, NUM_CHUNKS, count))
    assert sum(_by_key(p)[("lzma", "chunked")]["num_chunks"] for p in parts) == NUM_CHUNKS
    shard_file = tmp_path / "sharded" / "shards" / f"0-of-{count}" / "results.jsonl"
    assert len(runs.read_jsonl(shard_file)) == 6
    merged = _by_key(shards.gather(config, tmp_path / "sharded", count))
    _assert_same(merged, single)
    assert merged[("gzip", "chunked")]["header_bytes"] > 0  # the convention applied to totals
    written = _by_key(runs.read_jsonl(tmp_path / "sharded" / "results.jsonl"))
    assert written.keys() == single.keys()
    assert (tmp_path / "sharded" / "results.csv").exists()


@pytest.mark.parametrize("count", [1, 3, 4])
def test_model_shards_merge_to_the_single_run(run, hf_model, tmp_path, count):
    config = _config(compressors=f"gzip,lm:{run},hf:{hf_model}", **LM)
    single = _by_key(evaluation.evaluate(config, tmp_path / "single"))
    assert single[(f"lm:{run}", "chunked")]["rate_from"] == "coded"
    merged = evaluation.merge_shards(config, _shard_all(config, tmp_path / "sharded", count))
    _assert_same(_by_key(merged), single)


def test_more_shards_than_chunks_still_merge(run, tmp_path):
    config = _config(compressors=f"gzip,lm:{run}", num_chunks=3, **LM)
    single = _by_key(evaluation.evaluate(config, tmp_path / "single"))
    parts = _shard_all(config, tmp_path / "sharded", 5)
    assert [_by_key(p)[("gzip", "chunked")]["num_chunks"] for p in parts] == [1, 1, 1, 0, 0]
    _assert_same(_by_key(evaluation.merge_shards(config, parts)), single)


def test_a_stopped_shard_resumes_to_the_same_sums(run, tmp_path, monkeypatch):
    config = _config(compressors=f"gzip,lm:{run}", **LM)
    whole = _by_key(evaluation.evaluate_shard(config, tmp_path / "whole", 1, 3))
    rated, sent = [], []
    rate = language_model.LanguageModelCompressor.rate

    def rate_then_signal(self, chunks, *args, **kwargs):
        rated.append(len(list(chunks())))
        if len(rated) == 2 and not sent:  # SIGUSR1 (Slurm's time-limit warning) mid-way
            sent.append(os.kill(os.getpid(), signal.SIGUSR1))
        return rate(self, chunks, *args, **kwargs)

    monkeypatch.setattr(language_model.LanguageModelCompressor, "rate", rate_then_signal)
    with pytest.raises(evaluation.ShardStopped, match="SIGUSR1") as stopped:
        evaluation.evaluate_shard(config, tmp_path / "stopped", 1, 3)
    assert stopped.value.exit_status == slurm.PREEMPTED_EXIT_CODE
    progress = evaluation.read_progress(tmp_path / "stopped" / "shards" / "1-of-3")
    entry = progress["entries"][f"lm:{run}"]
    assert not entry["done"] and 0 < entry["next"] < len(range(1, NUM_CHUNKS, 3))
    assert progress["entries"]["classical chunked"]["done"]
    rated.clear()
    resumed = _by_key(evaluation.evaluate_shard(config, tmp_path / "stopped", 1, 3))
    assert sum(rated) == len(range(1, NUM_CHUNKS, 3)) - entry["next"]  # only what was left
    assert resumed.keys() == whole.keys()
    for key, record in whole.items():
        sums, again = record["shard"]["sums"], resumed[key]["shard"]["sums"]
        if "ideal_bits" in sums:
            assert again["ideal_bits"] == pytest.approx(sums["ideal_bits"], rel=1e-12)
            assert again["counts"] == sums["counts"]
        exact = ("num_chunks", "raw_bytes", "missed_bits", "coded_bytes")
        assert {k: again.get(k) for k in exact} == {k: sums.get(k) for k in exact}
        assert resumed[key]["shard"].get("size") == record["shard"].get("size")
        assert resumed[key]["compressed_bytes"] == record["compressed_bytes"]


def test_a_changed_model_is_never_mixed_in(run, tmp_path, capsys):
    config = _config(compressors=f"lm:{run}", **LM)
    directory = tmp_path / "shards" / "0-of-2"
    evaluation.evaluate_shard(config, tmp_path, 0, 2)
    progress = evaluation.read_progress(directory)
    entry = progress["entries"][f"lm:{run}"]
    # As if it had stopped half-way under another checkpoint: its sums must not be kept.
    entry["key"]["identities"][f"lm:{run}"]["model_sha256"] = "0" * 64
    entry.update(done=False, next=4, sums={**entry["sums"], "num_chunks": 1000})
    (directory / evaluation.PROGRESS_FILE).write_text(json.dumps(progress))
    (record,) = evaluation.evaluate_shard(config, tmp_path, 0, 2)
    assert record["num_chunks"] == len(range(0, NUM_CHUNKS, 2))
    assert "differs in model_sha256" in capsys.readouterr().err


def _cli(*args, cwd=REPO, **kwargs):
    return subprocess.run(
        [sys.executable, str(REPO / "eval_compress.py"), "--config=configs/eval.py", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs,
    )  # fmt: skip


CLI_CHUNKS = 163  # enough one-chunk groups per shard to stop it part-way


def _flags(run, out):
    return [
        f"--config.compressors=gzip,lzma,lm:{run}",
        f"--config.num_chunks={CLI_CHUNKS}",
        f"--config.chunk_size={CONTEXT}",
        "--config.shard_group=1",
        "--config.workers=2",
        "--config.progress=False",
        *(f"--config.{k}={v}" for k, v in LM.items()),
        f"--workdir={out}",
    ]


def test_gather_refuses_until_every_shard_is_complete(tmp_path):
    config = _config(compressors="gzip")
    evaluation.evaluate_shard(config, tmp_path, 0, 3)
    args = ["--config.compressors=gzip", f"--config.num_chunks={NUM_CHUNKS}",
            f"--config.chunk_size={CONTEXT}", f"--workdir={tmp_path}"]  # fmt: skip
    result = _cli(*args, "--mode=gather", "--shards=3")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "1-of-3 (missing); 2-of-3 (missing) not complete" in line, line
    assert not (tmp_path / "results.jsonl").exists()
    result = _cli(*args, "--mode=status", "--shards=3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:2] == ["0-of-3", "complete"] and lines[2].split()[1] == "new"
    # Other settings than the shards were rated with: they do not count as done.
    result = _cli(*args[:-2], "--config.chunk_size=32", args[-1], "--mode=gather", "--shards=3")
    assert result.returncode == 1 and "0-of-3 (lacks gzip chunked, gzip unchunked)" in result.stderr
    result = _cli(*args, "--mode=gather")
    assert result.returncode == 1 and "needs --shards=N" in result.stderr


def test_slurm_mode_checks_the_config_before_submitting(run, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sbatch: never reached
    for bad, message in (
        ("--config.compressors=gzip,nope", "Unknown compressor 'nope'"),
        (f"--config.compressors=lm:{run} --config.chunk_size=128", "do not fit the model's"),
        ("--config.shard_group=0", "shard_group=0 must be at least 1"),
    ):
        result = _cli(*bad.split(), f"--workdir={tmp_path}", "--mode=slurm", "--shards=2", env=env)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert message in line, line
    result = _cli(f"--workdir={tmp_path}", "--mode=slurm", "--shards=2", env=env)
    assert result.returncode == 1 and "sbatch is not on the PATH" in result.stderr
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").rglob("*.sbatch"))
    result = _cli(f"--workdir={tmp_path}", "--shard=0/2", "--mode=gather", env=env)
    assert result.returncode == 2 and "leave out --mode=gather" in result.stderr


def test_local_shards_resume_after_sigterm_and_sigkill_and_gather(run, tmp_path):
    """The Slurm test's evaluation through --shard=I/N: one shard stopped by SIGTERM (saves,
    exits 75), one killed outright; each run again resumes; gathered, the single run's."""
    out, args = tmp_path / "sharded", _flags(run, tmp_path / "sharded")
    single = _cli(*_flags(run, tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    for index in (0, 3):
        assert _cli(*args, f"--shard={index}/4").returncode == 0
    for index, how in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
        progress = out / "shards" / f"{index}-of-4" / evaluation.PROGRESS_FILE
        process = subprocess.Popen(
            [sys.executable, str(REPO / "eval_compress.py"), "--config=configs/eval.py", *args,
             f"--shard={index}/4"], cwd=REPO, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _wait_for(lambda progress=progress: _model_reached(progress, run) > 0, process)
        process.send_signal(how)
        stderr = process.communicate(timeout=300)[1]
        if how == signal.SIGTERM:
            assert process.returncode == slurm.PREEMPTED_EXIT_CODE, stderr
            assert "stopped on SIGTERM" in stderr.strip().splitlines()[-1]
        reached = _model_reached(progress, run)
        assert 0 < reached < len(range(index, CLI_CHUNKS, 4)), stderr
        result = _cli(*args, f"--shard={index}/4")
        assert result.returncode == 0, result.stderr
    result = _cli(*args, "--mode=gather", "--shards=4")
    assert result.returncode == 0, result.stderr
    assert "Records:" in result.stdout
    _assert_same(
        _by_key(runs.read_jsonl(out / "results.jsonl")),
        _by_key(runs.read_jsonl(tmp_path / "single" / "results.jsonl")),
    )


def _model_reached(progress: pathlib.Path, run: str) -> int:
    try:
        entry = json.loads(progress.read_text())["entries"].get(f"lm:{run}")
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return entry["next"] if entry and not entry["done"] else 0


def _wait_for(condition, process=None, seconds=300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"the shard ended before it could be stopped: {process.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds} s")


@pytest.fixture(scope="module")
def slurm_cluster():
    try:
        slurm.check_available()
    except slurm.SlurmUnavailable as e:
        if REQUIRE_SLURM:
            pytest.fail(f"LMC_REQUIRE_SLURM=1, but {e}")
        pytest.skip(str(e))


def test_slurm_shards_requeue_and_gather_to_the_single_run(slurm_cluster, run, tmp_path):
    out = tmp_path / "sharded"
    args = _flags(run, out)
    submitted = _cli(*args, "--mode=slurm", "--shards=4", "--slurm.time_limit_minutes=10",
                     "--slurm.signal_lead_seconds=60", cwd=tmp_path)  # fmt: skip
    assert submitted.returncode == 0 and "Submitted job array" in submitted.stdout, submitted.stderr
    (state_file,) = slurm.submissions(out / "shards" / slurm.LOG_DIR)
    job_id = json.loads(state_file.read_text())["job_id"]
    try:
        single = _cli(*_flags(run, tmp_path / "single"))  # meanwhile, the single process
        assert single.returncode == 0, single.stderr
        # Preempt shard 2 once its model is part-way: it saves, exits 75, is requeued, resumes.
        progress = out / "shards" / "2-of-4" / evaluation.PROGRESS_FILE
        _wait_for(lambda: _model_reached(progress, run) > 0)
        job = slurm.query(state_file)["2-of-4"].job
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=60)

        def finished():
            config = _config(compressors=f"gzip,lzma,lm:{run}", num_chunks=CLI_CHUNKS, **LM)
            rows = shards.status(config, out, 4)
            return all(r["state"] in ("complete", "failed") for r in rows) and rows

        _wait_for(finished, seconds=480)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
    status = _cli(*args, "--mode=status", "--shards=4")
    assert status.stdout.count("complete") == 4, status.stdout
    attempts = runs.read_jsonl(out / "shards" / "2-of-4" / slurm.LOG_DIR / slurm.ATTEMPTS_FILE)
    assert [a["exit_code"] for a in attempts] == [slurm.PREEMPTED_EXIT_CODE, 0]
    log = (out / "shards" / "2-of-4" / slurm.LOG_DIR / f"{job}.out").read_text()
    assert "stopped on SIGUSR1" in log
    gathered = _cli(*args, "--mode=gather", "--shards=4")
    assert gathered.returncode == 0, gathered.stderr
    _assert_same(
        _by_key(runs.read_jsonl(out / "results.jsonl")),
        _by_key(runs.read_jsonl(tmp_path / "single" / "results.jsonl")),
    )
    assert not math.isnan(runs.read_jsonl(out / "results.jsonl")[-1]["log_loss_bytes"])
