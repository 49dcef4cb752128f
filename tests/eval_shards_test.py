"""Sharded evaluation (eval_compress.py --shard, --mode=slurm/status/gather; compressors/shards.py):
N shards merge to the single-process records, resume after a stop or a kill, and run on Slurm.

Cheap by design: one tiny trained run, one pretrained fixture and one single-process run of each
configuration serve the whole module; what needs no process of its own runs in this one. The
shards that are stopped or killed run as processes through `_PAUSER`, which holds a shard once it
has saved a given number of chunks until a signal came (or the test kills it), so that the test
never races the shard's progress.

The Slurm test runs against the one-node testbed (`bash cluster/testbed/start.sh`); without a
Slurm controller it skips (with LMC_REQUIRE_SLURM=1, as CI sets it, it fails), and the local
test runs the same stops through --shard=I/N.
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
from tests.runtime_helpers import cached_env as _env

REPO = pathlib.Path(__file__).resolve().parents[1]
CONTEXT = 64  # the test model's context and the chunk size: short, so that it rates fast
NUM_CHUNKS = 7  # not a multiple of 2, 3 or 4: shards of different sizes
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
    config.train.steps = 2
    config.train.checkpoint_every = 2
    config.train.eval_every = 1000
    config.train.eval_max_bytes = CONTEXT
    config.train.progress = False
    workdir = tmp_path_factory.mktemp("run")
    train.train(config, workdir)
    return str(workdir)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("gpt2")
    config = hf_fixtures.gpt2_config(n_positions=CONTEXT // 2)  # a chunk in pieces
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


def _classical_config():
    # 7-bit masking on classical compressors too: the scale must apply to the totals.
    return _config(compressors="gzip,lzma,bzip2", seven_bit="shift", seven_bit_all=True)


def _model_config(run, hf_model):
    return _config(compressors=f"gzip,lm:{run},hf:{hf_model}", **LM)


@pytest.fixture(scope="module")
def classical_single(tmp_path_factory):
    """The single run's records of `_classical_config`, by (compressor, chunking)."""
    return _by_key(evaluation.evaluate(_classical_config(), tmp_path_factory.mktemp("single")))


@pytest.fixture(scope="module")
def model_single(run, hf_model, tmp_path_factory):
    """The single run's records of `_model_config` (gzip, the run and the pretrained model)."""
    config = _model_config(run, hf_model)
    return _by_key(evaluation.evaluate(config, tmp_path_factory.mktemp("single")))


def _by_key(records):
    return {(r["compressor"], r["chunking"]): r for r in records}


def _only(records: dict, *names) -> dict:
    return {key: r for key, r in records.items() if key[0] in names}


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


def test_shard_and_command_line_helpers(tmp_path):
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
    # --mode=status and gather without --shards (eval_compress.py passes its 0 on).
    for call in (shards.gather, shards.status):
        with pytest.raises(ValueError, match="needs --shards=N"):
            call(_config(compressors="gzip"), tmp_path, 0)


@pytest.mark.parametrize("count", [1, 3, 4])
def test_classical_shards_merge_to_the_single_run(classical_single, tmp_path, count):
    config = _classical_config()
    parts = _shard_all(config, tmp_path, count)
    # Interleaved: shard I has chunks I, I + N, ...; the unchunked streams are shard 0's alone.
    for index, records in enumerate(parts):
        counts = {(r["compressor"], r["chunking"]): r["num_chunks"] for r in records}
        assert {c for _, c in counts} == ({"chunked", "unchunked"} if index == 0 else {"chunked"})
        assert counts[("gzip", "chunked")] == len(range(index, NUM_CHUNKS, count))
    assert sum(_by_key(p)[("lzma", "chunked")]["num_chunks"] for p in parts) == NUM_CHUNKS
    shard_file = tmp_path / "shards" / f"0-of-{count}" / "results.jsonl"
    assert len(runs.read_jsonl(shard_file)) == 6
    merged = _by_key(shards.gather(config, tmp_path, count))
    _assert_same(merged, classical_single)
    assert merged[("gzip", "chunked")]["header_bytes"] > 0  # the convention applied to totals
    written = _by_key(runs.read_jsonl(tmp_path / "results.jsonl"))
    assert written.keys() == classical_single.keys()
    assert (tmp_path / "results.csv").exists()


@pytest.mark.parametrize("count", [1, 3, 4])
def test_model_shards_merge_to_the_single_run(run, hf_model, model_single, tmp_path, count):
    config = _model_config(run, hf_model)
    assert model_single[(f"lm:{run}", "chunked")]["rate_from"] == "coded"
    parts = _shard_all(config, tmp_path, count)
    for index, records in enumerate(parts):  # every chunk once, whatever the model
        for record in records:
            if record["chunking"] == "chunked":
                assert record["num_chunks"] == len(range(index, NUM_CHUNKS, count)), record
    _assert_same(_by_key(evaluation.merge_shards(config, parts)), model_single)


def test_more_shards_than_chunks_still_merge(run, tmp_path):
    config = _config(compressors=f"gzip,lm:{run}", num_chunks=2, **LM)
    single = _by_key(evaluation.evaluate(config, tmp_path / "single"))
    parts = _shard_all(config, tmp_path / "sharded", 3)
    assert [_by_key(p)[("gzip", "chunked")]["num_chunks"] for p in parts] == [1, 1, 0]
    assert [_by_key(p)[(f"lm:{run}", "chunked")]["num_chunks"] for p in parts] == [1, 1, 0]
    _assert_same(_by_key(evaluation.merge_shards(config, parts)), single)


def test_a_stopped_shard_resumes_to_the_same_sums(run, tmp_path, monkeypatch):
    config = _config(compressors=f"gzip,lm:{run}", shard_group=1, **LM)
    mine = len(range(1, NUM_CHUNKS, 2))  # shard 1 of 2: 3 chunks, one group each
    whole = _by_key(evaluation.evaluate_shard(config, tmp_path / "whole", 1, 2))
    rated, sent = [], []
    rate = language_model.LanguageModelCompressor.rate

    def rate_then_signal(self, chunks, *args, **kwargs):
        rated.append(len(list(chunks())))
        if len(rated) == 2 and not sent:  # SIGUSR1 (Slurm's time-limit warning) mid-way
            sent.append(os.kill(os.getpid(), signal.SIGUSR1))
        return rate(self, chunks, *args, **kwargs)

    monkeypatch.setattr(language_model.LanguageModelCompressor, "rate", rate_then_signal)
    with pytest.raises(evaluation.ShardStopped, match="SIGUSR1") as stopped:
        evaluation.evaluate_shard(config, tmp_path / "stopped", 1, 2)
    assert stopped.value.exit_status == slurm.PREEMPTED_EXIT_CODE
    progress = evaluation.read_progress(tmp_path / "stopped" / "shards" / "1-of-2")
    entry = progress["entries"][f"lm:{run}"]
    assert not entry["done"] and 0 < entry["next"] < mine
    assert progress["entries"]["classical chunked"]["done"]
    rated.clear()
    resumed = _by_key(evaluation.evaluate_shard(config, tmp_path / "stopped", 1, 2))
    assert sum(rated) == mine - entry["next"]  # only what was left
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
    entry.update(done=False, next=2, sums={**entry["sums"], "num_chunks": 1000})
    (directory / evaluation.PROGRESS_FILE).write_text(json.dumps(progress))
    (record,) = evaluation.evaluate_shard(config, tmp_path, 0, 2)
    assert record["num_chunks"] == len(range(0, NUM_CHUNKS, 2))
    assert "differs in model_sha256" in capsys.readouterr().err


# Runs a script as `python SCRIPT ARGS` would, but with a shard held once it has saved
# $LMC_PAUSE_AT chunks of its entry $LMC_PAUSE_ENTRY (a prefix: 'classical chunked', 'lm:'),
# where $LMC_PAUSE_SHARD (I/N; any if unset) is its --shard: it writes its pid to
# $LMC_PAUSE_READY and waits until a signal reaches the shard's handler (SIGTERM, SIGUSR1) or
# the process is killed; never again once $LMC_PAUSE_READY exists (a requeued Slurm task).
# $LMC_PAUSE_LOG, if set, gets one line per progress save: the entry, chunks done, done.
# The test can then signal a shard part-way without racing it. Executable (its first line is
# this interpreter), so that it can stand in for Python as eval_compress.py's --python too.
_PAUSER = """
import os, pathlib, runpy, sys, time

script, *args = sys.argv[1:]
sys.argv = [script, *args]
sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` sets it

from compressors import evaluation

env = os.environ.get
at, entry_name = int(env("LMC_PAUSE_AT", "0")), env("LMC_PAUSE_ENTRY", "")
shard, ready, log = env("LMC_PAUSE_SHARD"), env("LMC_PAUSE_READY"), env("LMC_PAUSE_LOG")
held = at and (shard is None or f"--shard={shard}" in args) and not os.path.exists(ready)
signalled = []
note, save = evaluation._Signals._note, evaluation._Shard.save


def noting(self, number, frame):
    signalled.append(number)
    note(self, number, frame)


def holding(self):
    global held
    save(self)
    entry = self.state["entries"].get(self.current, {})
    if log and self.current:
        with open(log, "a") as f:
            f.write(f"{self.current}\\t{entry.get('next')}\\t{entry.get('done')}\\n")
    if held and self.current.startswith(entry_name) and entry.get("next") == at:
        held = False
        pathlib.Path(ready).write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while not signalled and time.monotonic() < deadline:
            time.sleep(0.01)


evaluation._Signals._note, evaluation._Shard.save = noting, holding
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def pauser(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("pauser") / "pause_python"
    path.write_text(f"#!{sys.executable}\n{_PAUSER}")
    path.chmod(0o755)
    return path


def _command(*args, python=sys.executable):
    return [str(python), str(REPO / "eval_compress.py"), "--config=configs/eval.py", *args]


def _cli(*args, cwd=REPO, env=None):
    return subprocess.run(
        _command(*args), cwd=cwd, capture_output=True, text=True, timeout=600, env=env or _env()
    )


def _flags(config, out) -> list[str]:
    """eval_compress.py's flags for `config` (a `_config`) into `out`."""
    keys = ("compressors", "num_chunks", "chunk_size", "shard_group", "workers", "progress",
            *LM)  # fmt: skip
    flat = config.to_dict()
    values = {k: flat[k] if "." not in k else flat["lm"][k.split(".")[1]] for k in keys}
    return [*(f"--config.{k}={v}" for k, v in values.items()), f"--workdir={out}"]


def test_gather_refuses_until_every_shard_is_complete(tmp_path):
    config = _config(compressors="gzip")
    evaluation.evaluate_shard(config, tmp_path, 0, 3)
    args = _flags(config, tmp_path)
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
    other = _flags(_config(compressors="gzip", chunk_size=CONTEXT // 2), tmp_path)
    result = _cli(*other, "--mode=gather", "--shards=3")
    assert result.returncode == 1 and "0-of-3 (lacks gzip chunked, gzip unchunked)" in result.stderr


def test_slurm_mode_checks_the_config_before_submitting(run, tmp_path, monkeypatch):
    def sbatch(*args, **kwargs):
        raise AssertionError("reached sbatch")

    monkeypatch.setattr(slurm, "submit_array", sbatch)
    for overrides, message in (
        ({"compressors": "gzip,nope"}, "Unknown compressor 'nope'"),
        ({"shard_group": 0}, "shard_group=0 must be at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            shards.submit(_config(**overrides), tmp_path, 2, slurm.SlurmOptions(), [])
    env = _env(PATH=os.path.dirname(sys.executable))  # no sbatch: never reached
    bad = [f"--config.compressors=lm:{run}", f"--config.chunk_size={4 * CONTEXT}"]
    result = _cli(*bad, f"--workdir={tmp_path}", "--mode=slurm", "--shards=2", env=env)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "do not fit the model's" in line, line
    result = _cli(f"--workdir={tmp_path}", "--mode=slurm", "--shards=2", env=env)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "sbatch is not on the PATH" in line, line
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").rglob("*.sbatch"))
    result = _cli(f"--workdir={tmp_path}", "--shard=0/2", "--mode=gather", env=env)
    assert result.returncode == 2 and "leave out --mode=gather" in result.stderr


def _saves(log: pathlib.Path) -> list[tuple[str, int, bool]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [
        (name, int(chunks), done == "True")
        for name, chunks, done in (line.split("\t") for line in lines)
    ]


def test_local_shards_resume_after_sigterm_and_sigkill_and_gather(pauser, tmp_path):
    """Shard 1 of 2 through --shard=I/N, one group per chunk: stopped by SIGTERM after its first
    (it saves and exits 75), run again and killed outright after its second, run again to the
    end, each run going on from the last saved group; gathered, the single run's."""
    config = _config(compressors="gzip", shard_group=1)
    out, mine = tmp_path / "sharded", len(range(1, NUM_CHUNKS, 2))
    single = _by_key(evaluation.evaluate(config, tmp_path / "single"))
    evaluation.evaluate_shard(config, out, 0, 2)
    args = [*_flags(config, out), "--shard=1/2"]
    progress = out / "shards" / "1-of-2" / evaluation.PROGRESS_FILE
    for at, how in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
        log, ready = tmp_path / f"saves-{at}.log", tmp_path / f"ready-{at}"
        env = _env(LMC_PAUSE_AT=str(at), LMC_PAUSE_ENTRY="classical chunked",
                   LMC_PAUSE_READY=str(ready), LMC_PAUSE_LOG=str(log))  # fmt: skip
        process = subprocess.Popen(
            [str(pauser), *_command(*args)[1:]], cwd=REPO, env=env, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        _wait_for(ready.exists, process)
        process.send_signal(how)
        stderr = process.communicate(timeout=300)[1]
        if how == signal.SIGTERM:
            assert process.returncode == slurm.PREEMPTED_EXIT_CODE, stderr
            assert "stopped on SIGTERM" in stderr.strip().splitlines()[-1]
        else:
            assert process.returncode == -signal.SIGKILL, stderr
        entry = json.loads(progress.read_text())["entries"]["classical chunked"]
        assert not entry["done"] and entry["next"] == at < mine, stderr
        # Each run goes on from the chunks the one before saved (the first from none).
        assert _saves(log)[-1] == ("classical chunked", at, False)
        assert [n for _, n, _ in _saves(log)] == ([0] if at == 1 else []) + [at]
    log = tmp_path / "saves-last.log"
    result = subprocess.run(
        [str(pauser), *_command(*args)[1:]], cwd=REPO, env=_env(LMC_PAUSE_LOG=str(log)),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _saves(log) == [("classical chunked", mine, False), ("classical chunked", mine, True)]
    result = _cli(*_flags(config, out), "--mode=gather", "--shards=2")
    assert result.returncode == 0, result.stderr
    assert "Records:" in result.stdout
    _assert_same(_by_key(runs.read_jsonl(out / "results.jsonl")), single)


def _model_reached(progress: pathlib.Path, run: str) -> int:
    try:
        entry = json.loads(progress.read_text())["entries"].get(f"lm:{run}")
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return entry["next"] if entry and not entry["done"] else 0


def _wait_for(condition, process=None, seconds=300, every=0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"the shard ended before it could be stopped: {process.stderr.read()}")
        time.sleep(every)
    pytest.fail(f"timed out after {seconds} s")


def test_slurm_shards_requeue_and_gather_to_the_single_run(
    slurm_cluster, run, model_single, pauser, tmp_path
):
    """Four shards of gzip and the run as a Slurm job array; shard 1, held after its first
    model group, gets SIGUSR1 (Slurm's time-limit warning): it saves, exits 75, is requeued and
    goes on from there; gathered, the single run's records."""
    out, ready = tmp_path / "sharded", tmp_path / "ready"
    config = _config(compressors=f"gzip,lm:{run}", shard_group=1, **LM)
    args = _flags(config, out)
    env = _env(LMC_PAUSE_AT="1", LMC_PAUSE_ENTRY="lm:", LMC_PAUSE_SHARD="1/4",
               LMC_PAUSE_READY=str(ready))  # fmt: skip
    submitted = _cli(*args, "--mode=slurm", "--shards=4", "--slurm.time_limit_minutes=10",
                     "--slurm.signal_lead_seconds=60", f"--python={pauser}", cwd=tmp_path,
                     env=env)  # fmt: skip
    assert submitted.returncode == 0 and "Submitted job array" in submitted.stdout, submitted.stderr
    (state_file,) = slurm.submissions(out / "shards" / slurm.LOG_DIR)
    job_id = json.loads(state_file.read_text())["job_id"]

    def held_or_failed():
        return ready.exists() or any(r["state"] == "failed" for r in shards.status(config, out, 4))

    def finished():
        rows = shards.status(config, out, 4)
        return all(r["state"] in ("complete", "failed") for r in rows) and rows

    try:
        _wait_for(held_or_failed, seconds=300, every=0.5)
        assert ready.exists(), shards.format_status(shards.status(config, out, 4))
        progress = out / "shards" / "1-of-4" / evaluation.PROGRESS_FILE
        assert _model_reached(progress, run) == 1
        job = slurm.query(state_file)["1-of-4"].job
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=60)
        _wait_for(finished, seconds=480, every=0.5)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
    table = shards.format_status(shards.status(config, out, 4))
    assert table.count("complete") == 4, table
    attempts = runs.read_jsonl(out / "shards" / "1-of-4" / slurm.LOG_DIR / slurm.ATTEMPTS_FILE)
    assert [a["exit_code"] for a in attempts] == [slurm.PREEMPTED_EXIT_CODE, 0]
    log = (out / "shards" / "1-of-4" / slurm.LOG_DIR / f"{job}.out").read_text()
    assert "stopped on SIGUSR1" in log
    gathered = _cli(*args, "--mode=gather", "--shards=4")
    assert gathered.returncode == 0, gathered.stderr
    merged = _by_key(runs.read_jsonl(out / "results.jsonl"))
    _assert_same(merged, _only(model_single, "gzip", f"lm:{run}"))
    assert not math.isnan(merged[(f"lm:{run}", "chunked")]["log_loss_bytes"])
