"""sweep.py: a sweep expands to exactly its declared runs, skips finished ones, gathers results."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

import runs
import sweep
from tests import runtime_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, cwd=REPO):
    """sweep.py with `args`. The runs it starts (Slurm passes the environment on) load and keep
    their programs in the test session's compilation cache (tests/conftest.py), so that a
    requeued attempt and a later sweep of the same run load what an earlier one compiled."""
    return subprocess.run(
        [sys.executable, str(REPO / "sweep.py"), *map(str, args)],
        cwd=cwd,
        env=runtime_helpers.cached_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write_sweep(tmp_path, body: str) -> pathlib.Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "my_sweep.py"
    path.write_text(f"def get_sweep():\n    return {body}\n")
    return path


_SWEEP = """{
    "name": "s",
    "config": "configs/default.py",
    "fixed": {"dataset": "pydocs", "train.steps": 2, "model.context_length": 16},
    "axes": {"size": ["test", "20K"], "tokenizer": ["bytes", "bpe:300"],
             "data.train_bytes": [0, 4096]},
}"""


def test_expand_is_the_exact_product_of_the_axes(tmp_path):
    runs = sweep.expand(sweep.load_sweep(_write_sweep(tmp_path, _SWEEP)))
    assert len(runs) == 2 * 2 * 2
    assert len({r.name for r in runs}) == 8
    combos = {(r.values["size"], r.values["tokenizer"], r.values["data.train_bytes"]) for r in runs}
    assert combos == {
        (s, t, b) for s in ("test", "20K") for t in ("bytes", "bpe:300") for b in (0, 4096)
    }
    first = runs[0]
    assert first.name == "size=test+tokenizer=bytes+train_bytes=0"
    assert first.config_arg == "configs/default.py:dataset=pydocs,size=test,tokenizer=bytes"
    assert first.overrides == {"train.steps": 2, "model.context_length": 16, "data.train_bytes": 0}
    assert first.steps == 2
    cmd = first.command(pathlib.Path("runs/s") / first.name)
    assert cmd[:3] == ["python", "train.py", f"--config={first.config_arg}"]
    assert "--config.data.train_bytes=0" in cmd and cmd[-1] == f"--workdir=runs/s/{first.name}"


def test_print_mode_prints_one_command_per_run(tmp_path):
    result = _cli(f"--sweep={_write_sweep(tmp_path, _SWEEP)}", "--mode=print", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("python train.py ") for line in lines)
    # the tokenizer value holds a colon: the printed command must survive a shell
    assert any(
        "'--config=configs/default.py:dataset=pydocs,size=test,tokenizer=bpe:300'" in x
        or "tokenizer=bpe:300" in x
        for x in lines
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"name": "s", "config": "c.py", "axes": {"size": []}}', "non-empty list"),
        ('{"name": "s", "config": "c.py", "axes": {"size": ["a", "a"]}}', "repeats"),
        ('{"name": "s", "config": "c.py:size=1", "axes": {}}', "without ':arg'"),
        ('{"name": "s", "config": "c.py", "axes": {}, "colour": 1}', "unknown sweep keys"),
        ('{"name": "s", "config": "c.py", "fixed": {"a": 1}, "axes": {"a": [2]}}', "both"),
        ('{"config": "c.py", "axes": {}}', "lacks 'name'"),
    ],
)
def test_bad_sweeps_are_refused_with_the_reason(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(_write_sweep(tmp_path, body))


def test_local_skips_complete_runs_and_resumes_partial_ones(tmp_path, monkeypatch):
    spec = sweep.load_sweep(_write_sweep(tmp_path, _SWEEP))
    runs = sweep.expand(spec)
    root = tmp_path / "runs"
    done, partial = root / "s" / runs[0].name, root / "s" / runs[1].name
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"step": 2, "num_params": 7}))
    (done / "config.json").write_text(
        json.dumps({"tokenizer": "bytes", "model": {"context_length": 16}})
    )
    partial.mkdir(parents=True)
    (partial / "results.json").write_text(json.dumps({"step": 1}))  # fewer steps than declared
    calls = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd, cwd: calls.append(cmd) or 0)
    assert sweep.run_local(spec, root, "python") == 0
    workdirs = [c[-1] for c in calls]
    assert f"--workdir={done}" not in workdirs
    assert f"--workdir={partial}" in workdirs
    assert len(calls) == 7
    assert sweep.run_status(done, runs[0]) == "complete"
    assert sweep.run_status(partial, runs[1]) == "partial"
    assert sweep.run_status(root / "s" / runs[2].name, runs[2]) == "new"


def test_failed_runs_are_reported_and_counted(tmp_path, monkeypatch, capsys):
    spec = sweep.load_sweep(_write_sweep(tmp_path, _SWEEP))
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd, cwd: 1)
    assert sweep.run_local(spec, tmp_path, "python") == 8
    assert "8 run(s) failed" in capsys.readouterr().out


def test_real_sweep_trains_gathers_and_then_skips(tmp_path, monkeypatch):
    body = """{
        "name": "tiny",
        "config": "configs/default.py",
        "fixed": {"size": "test", "model.context_length": 16, "train.batch_size": 4,
                  "train.steps": 2, "train.eval_max_bytes": 256, "train.progress": False},
        "axes": {"data.train_bytes": [0, 2048]},
    }"""
    path = _write_sweep(tmp_path, body)
    root = tmp_path / "runs"
    args = [f"--sweep={path}", "--mode=local", f"--root={root}", f"--python={sys.executable}"]
    result = _cli(*args, cwd=tmp_path)  # from another directory than the repository
    assert result.returncode == 0, result.stderr[-3000:]
    with open(root / "tiny" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["complete", "complete"]
    assert [int(r["step"]) for r in rows] == [2, 2]
    assert int(rows[1]["train_bytes"]) == 2048 and int(rows[0]["train_bytes"]) > 2048
    assert all(float(r["test_bits_per_byte"]) > 0 for r in rows)
    calls = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd, cwd: calls.append(cmd) or 0)
    assert sweep.run_local(sweep.load_sweep(path), root, sys.executable) == 0
    assert calls == []  # both complete: nothing runs again


@pytest.mark.parametrize("name, count", [("scaling", 10), ("tokenizers", 8), ("context", 1)])
def test_shipped_sweeps_expand_to_valid_configs(name, count):
    from configs import default

    runs = sweep.expand(sweep.load_sweep(REPO / "configs" / "sweeps" / f"{name}.py"))
    assert len(runs) == count
    for run in runs:
        config = default.get_config(run.config_arg.split(":", 1)[1])
        for key, value in run.overrides.items():  # a misspelt field fails on the locked config
            section, field = key.split(".")
            config[section][field] = value
        assert config.train.steps == run.steps == 400


def test_bad_cluster_options_are_one_line(tmp_path):
    path = _write_sweep(tmp_path, _SWEEP)
    result = _cli(f"--sweep={path}", "--mode=slurm", "--slurm.gpuz=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sweep.py: no such config field: gpuz (see --help)"
    ]
    asks = _write_sweep(tmp_path, _SWEEP.rstrip()[:-1] + '"slurm": {"gpus_per_run": 2}}')
    result = _cli(f"--sweep={asks}", "--mode=slurm", "--slurm.gpus_per_run=0")
    assert result.returncode == 1
    assert "the sweep asks for 2 GPU(s) per run" in result.stderr.strip().splitlines()[-1]
    broken = _write_sweep(tmp_path / "b", "{'name': ")
    result = _cli(f"--sweep={broken}", "--mode=print")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "does not load" in result.stderr


def test_no_slurm_reachable_submits_nothing(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sbatch on the PATH
    result = subprocess.run(
        [sys.executable, str(REPO / "sweep.py"), f"--sweep={_write_sweep(tmp_path, _SWEEP)}",
         "--mode=slurm", f"--root={tmp_path / 'runs'}"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "sbatch is not on the PATH" in line and "cluster/testbed/start.sh" in line
    assert not (tmp_path / "runs" / "s" / "slurm").exists() or not list(
        (tmp_path / "runs" / "s" / "slurm").iterdir()
    )


_TINY = {"size": "test", "model.context_length": 16, "train.batch_size": 4, "train.steps": 2,
         "train.eval_max_bytes": 256, "train.progress": False}  # fmt: skip


@pytest.mark.parametrize("mode", ["local", "slurm", "print", "status"])
@pytest.mark.parametrize(
    "fixed, axes, message",
    [
        ({"train.stesp": 3}, {"seed": [0]},
         "sweep run seed=0: no such config field 'train.stesp': did you mean 'train.steps'?"),
        ({}, {"model.width": [16, "abc"]},
         "sweep run width=abc: flag --config.model.width=abc: invalid literal for int() "
         "with base 10: 'abc'"),
        ({}, {"train.batch_size": [4, 0]},
         "sweep run batch_size=0: train.batch_size=0: must be an integer >= 1."),
        ({}, {"size": ["test", "7M"]}, "sweep run size=7M: Unknown size '7M'"),
    ],
)  # fmt: skip
def test_bad_runs_are_refused_before_anything_runs(tmp_path, mode, fixed, axes, message):
    fixed = {k: v for k, v in {**_TINY, **fixed}.items() if k not in axes}
    body = {"name": "s", "config": "configs/default.py", "fixed": fixed, "axes": axes}
    root = tmp_path / "runs"
    result = _cli(
        f"--sweep={_write_sweep(tmp_path, repr(body))}", f"--mode={mode}", f"--root={root}"
    )
    assert result.returncode == 1, result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"sweep.py: {message}"), line
    assert result.stdout == "" and not root.exists()  # nothing ran, nothing was submitted


def _finished(spec, root, run, **saved):
    """Makes `run` look finished, trained with the sweep's config changed by `saved`."""
    config = sweep.run_config(spec, run)
    for key, value in saved.items():
        section, field = key.split(".")
        config[section][field] = value
    workdir = root / spec["name"] / run.name
    workdir.mkdir(parents=True)
    (workdir / runs.CONFIG_FILE).write_text(config.to_json())
    (workdir / runs.RESULTS_FILE).write_text(json.dumps({"step": config.train.steps}))
    return workdir


def test_a_sweep_that_changes_a_runs_recipe_is_refused(tmp_path):
    body = {"name": "s", "config": "configs/default.py", "fixed": _TINY,
            "axes": {"data.train_bytes": [0, 2048]}}  # fmt: skip
    path = _write_sweep(tmp_path, repr(body))
    spec, root = sweep.load_sweep(path), tmp_path / "runs"
    first, second = sweep.expand(spec)
    _finished(spec, root, first, **{"train.log_every": 1})  # operational: no matter
    _finished(spec, root, second, **{"train.steps": 1})
    result = _cli(f"--sweep={path}", "--mode=local", f"--root={root}")
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"sweep.py: sweep run {second.name}: ") and "train.steps: 1 -> 2" in line
    assert "--config.train.extend=True" in line
    extend = {**body, "fixed": {**_TINY, "train.extend": True}}
    sweep.check_runs(sweep.load_sweep(_write_sweep(tmp_path / "x", repr(extend))), root)
    width = {**body, "fixed": {**_TINY, "model.width": 16}}
    with pytest.raises(ValueError, match=r"^sweep run train_bytes=0: .*model.width: 32 -> 16"):
        sweep.check_runs(sweep.load_sweep(_write_sweep(tmp_path / "w", repr(width))), root)


# --- Against a real Slurm (cluster/testbed/start.sh): skipped where none runs, required in CI.


_CLUSTER_SWEEP = """{{
    "name": "{name}",
    "config": "configs/default.py",
    "fixed": {{"size": "test", "model.context_length": 32, "train.batch_size": 4,
              "train.log_every": 5, "train.eval_every": 10, "train.checkpoint_every": 1000,
              "train.eval_max_bytes": 512, "train.progress": False}},
    "axes": {{"train.steps": {steps}}},
}}"""


def _status(path, root) -> dict[str, dict]:
    return {r["run"]: r for r in sweep.status(sweep.load_sweep(path), root)}


def _wait(path, root, done, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _status(path, root)
        if all(done(r) for r in rows.values()):
            return rows
        time.sleep(1)
    raise AssertionError(f"runs not done in {timeout_s} s: {rows}")


def test_slurm_sweep_runs_requeues_and_gathers(slurm_cluster, tmp_path):
    from cluster import slurm

    root = tmp_path / "runs"
    arrays = _write_sweep(tmp_path, _CLUSTER_SWEEP.format(name="ci", steps=[30, 150]))
    pair = _write_sweep(tmp_path / "mp", _CLUSTER_SWEEP.format(name="mp", steps=[30]))
    common = ["--slurm.time_limit_minutes=10", "--slurm.signal_lead_seconds=60", f"--root={root}"]
    result = _cli(f"--sweep={arrays}", "--mode=slurm", *common, cwd=tmp_path)
    assert result.returncode == 0 and "Submitted job array" in result.stdout, result.stderr
    result = _cli(f"--sweep={pair}", "--mode=slurm", "--slurm.tasks_per_run=2", *common)
    assert result.returncode == 0, result.stderr
    # Preempt the long run once it trains: it checkpoints, exits 75 and is requeued.
    long_dir = root / "ci" / "steps=150"
    deadline = time.monotonic() + 180
    while len(runs.read_jsonl(long_dir / runs.METRICS_FILE)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    (state_file,) = slurm.submissions(root / "ci" / slurm.LOG_DIR)
    job = slurm.query(state_file)["steps=150"].job
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    rows = _wait(arrays, root, lambda r: r["state"] in ("complete", "failed"))
    assert {r["state"] for r in rows.values()} == {"complete"}, rows
    attempts = runs.read_jsonl(long_dir / slurm.LOG_DIR / slurm.ATTEMPTS_FILE)
    assert [a["exit_code"] for a in attempts] == [75, 0]
    steps = [r["step"] for r in runs.read_jsonl(long_dir / runs.METRICS_FILE) if "loss" in r]
    assert steps == list(range(5, 151, 5))  # every log line once, across the requeue
    result = _cli(f"--sweep={arrays}", "--mode=status", f"--root={root}")
    assert result.returncode == 0 and result.stdout.count("complete") == 2, result.stdout
    result = _cli(f"--sweep={arrays}", "--mode=gather", f"--root={root}")
    with open(root / "ci" / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["complete", "complete"]
    # The two-process run (srun -n 2) trains as one: the same numbers as one process.
    _wait(pair, root, lambda r: r["state"] in ("complete", "failed"))
    one, two = (
        runs.load_results(root / "ci" / "steps=30"),
        runs.load_results(root / "mp" / "steps=30"),
    )
    assert two is not None, _status(pair, root)
    assert two["test_bits_per_byte"] == pytest.approx(one["test_bits_per_byte"], rel=1e-5)
    (mp_state,) = slurm.submissions(root / "mp" / slurm.LOG_DIR)
    (submitted,) = json.loads(mp_state.read_text())["runs"]
    assert "--config.distributed=True" in submitted["argv"]


def test_slurm_failures_leave_nothing_and_show_the_runs_own_error(slurm_cluster, tmp_path):
    root = tmp_path / "runs"
    path = _write_sweep(tmp_path, _CLUSTER_SWEEP.format(name="bad", steps=[30]))
    result = _cli(f"--sweep={path}", "--mode=slurm", "--slurm.partition=no_such", f"--root={root}")
    assert result.returncode == 1 and "Invalid partition" in result.stderr, result.stderr
    assert not root.exists()  # sbatch refused: no empty folders left behind
    # A run that passes the checks but fails when it starts: its own line, not srun's.
    missing = tmp_path / "no_such_file.txt"
    body = _CLUSTER_SWEEP.format(name="bad", steps=[30]).replace(
        '"size": "test",', f'"size": "test", "data.path": "{missing}",'
    )
    path = _write_sweep(tmp_path / "missing", body)
    result = _cli(f"--sweep={path}", "--mode=slurm", f"--root={root}")
    assert result.returncode == 0, result.stderr
    row = _wait(path, root, lambda r: r["state"] in ("complete", "failed"))["steps=30"]
    assert row["state"] == "failed"
    assert row["reason"] == f"exit status 1: train.py: No such file: {missing}"
    result = _cli(f"--sweep={path}", "--mode=status", f"--root={root}")
    assert f"train.py: No such file: {missing}" in result.stdout and "srun" not in result.stdout


def test_a_signal_to_the_batch_script_reaches_train_py(slurm_cluster, tmp_path):
    from cluster import slurm

    root = tmp_path / "runs"
    path = _write_sweep(tmp_path, _CLUSTER_SWEEP.format(name="batch", steps=[150]))
    result = _cli(f"--sweep={path}", "--mode=slurm", f"--root={root}")
    assert result.returncode == 0, result.stderr
    workdir = root / "batch" / "steps=150"
    deadline = time.monotonic() + 180
    while len(runs.read_jsonl(workdir / runs.METRICS_FILE)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    (state_file,) = slurm.submissions(root / "batch" / slurm.LOG_DIR)
    job = slurm.query(state_file)["steps=150"].job
    # Only the batch script gets it; it passes it on to train.py, which checkpoints and stops.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=60)
    rows = _wait(path, root, lambda r: r["state"] in ("complete", "failed"))
    assert rows["steps=150"]["state"] == "complete", rows
    attempts = runs.read_jsonl(workdir / slurm.LOG_DIR / slurm.ATTEMPTS_FILE)
    assert [a["exit_code"] for a in attempts] == [slurm.PREEMPTED_EXIT_CODE, 0]
    log = (workdir / slurm.LOG_DIR / f"{job}.out").read_text().splitlines()
    assert any("SIGUSR1" in line and line.startswith("train.py: ") for line in log), log
