"""Tests of cluster.slurm, most of them against a real Slurm: the one-node testbed.

  bash cluster/testbed/start.sh && .venv/bin/python -m pytest tests/cluster_test.py

Without a Slurm controller the cluster tests skip, saying how to start one; with
LMC_REQUIRE_SLURM=1 (as CI sets it) they fail instead. Option checks run everywhere.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from cluster import slurm

WAIT_SECONDS = 90
FINAL = ("complete", "failed")

# A stand-in for train.py: python fake_run.py WORKDIR MODE. Every process writes what Slurm told
# it into WORKDIR/env.RANK.json; then, by MODE:
#   ok           prints a line and exits 0
#   fail         raises ValueError (exit status 1)
#   wait_go      waits for WORKDIR/go, then exits 0
#   preemptible  resumes if WORKDIR/checkpoint.RANK exists (writes resumed.RANK, exits 0); else
#                writes ready.RANK, waits for SIGUSR1 or SIGTERM, writes checkpoint.RANK holding
#                the signal's number and exits with the preempted status.
FAKE_RUN = f"""
import json, os, pathlib, signal, sys, time
signals = []
signal.signal(signal.SIGUSR1, lambda number, frame: signals.append(number))
signal.signal(signal.SIGTERM, lambda number, frame: signals.append(number))
workdir, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
rank = os.environ.get("SLURM_PROCID", "x")
keys = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
        "CUDA_VISIBLE_DEVICES")
env = {{key: os.environ.get(key) for key in keys}}
env["cwd"] = os.getcwd()
(workdir / f"env.{{rank}}.json").write_text(json.dumps(env))
if mode == "ok":
    print(f"hello from task {{rank}}")
elif mode == "fail":
    raise ValueError("boom from the run")
elif mode == "wait_go":
    (workdir / f"ready.{{rank}}").write_text("")
    deadline = time.time() + {WAIT_SECONDS}
    while not (workdir / "go").exists() and time.time() < deadline:
        time.sleep(0.05)
elif mode == "preemptible":
    if (workdir / f"checkpoint.{{rank}}").exists():
        (workdir / f"resumed.{{rank}}").write_text(os.environ.get("SLURM_RESTART_COUNT", ""))
        sys.exit(0)
    (workdir / f"ready.{{rank}}").write_text("")
    deadline = time.time() + {WAIT_SECONDS}
    while not signals and time.time() < deadline:
        time.sleep(0.05)
    if not signals:
        sys.exit(3)
    time.sleep(0.5)  # "saving a checkpoint"
    (workdir / f"checkpoint.{{rank}}").write_text(str(signals[0]))
    print(f"task {{rank}} checkpointed on signal {{signals[0]}}", flush=True)
    sys.exit({slurm.PREEMPTED_EXIT_CODE})
"""


@pytest.fixture
def jobs():
    """Job ids a test submitted; whatever is left of them is cancelled afterwards."""
    ids = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def _submit(jobs, tmp_path, modes, options=None, names=None):
    """Submits one fake run per mode (in tmp_path/run0, run1...) and returns the Submission."""
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    runs = []
    for i, mode in enumerate(modes):
        workdir = tmp_path / f"run{i}"
        workdir.mkdir()
        name = names[i] if names else f"run{i}"
        runs.append((name, [sys.executable, str(script), str(workdir), mode], workdir))
    submission = slurm.submit_array(
        runs, options or slurm.SlurmOptions(), tmp_path / "submissions", cwd=tmp_path
    )
    jobs.append(submission.job_id)
    return submission


def _wait_until(condition, what, seconds=WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


def _wait_final(submission, seconds=WAIT_SECONDS, seen=None):
    """Polls query until every run is complete or failed; `seen` collects (state, reason)."""

    def final():
        states = slurm.query(submission.state_file)
        if seen is not None:
            seen.update((s.name, s.state, s.reason) for s in states.values())
        return states if all(s.state in FINAL for s in states.values()) else None

    return _wait_until(final, f"the runs of job {submission.job_id} to end", seconds)


def _env(workdir, rank):
    return json.loads((workdir / f"env.{rank}.json").read_text())


def _exit_codes(workdir):
    lines = (workdir / slurm.LOG_DIR / slurm.ATTEMPTS_FILE).read_text().splitlines()
    return [json.loads(line)["exit_code"] for line in lines]


def _sinfo(fmt):
    result = subprocess.run(["sinfo", "-h", "-o", fmt], capture_output=True, text=True, timeout=60)
    return result.stdout.split()


# --- Options and argument checks: no cluster needed. ----------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus_per_run": -1}, r"gpus_per_run must be at least 0, got -1"),
        ({"nodes_per_run": 0}, r"nodes_per_run must be at least 1"),
        ({"cpus_per_task": 1.5}, r"cpus_per_task must be an integer"),
        ({"tasks_per_run": 3, "nodes_per_run": 2}, r"3 tasks per run do not split evenly"),
        ({"gpus_per_run": 4, "tasks_per_run": 3}, r"gpus_per_run=4 cannot be shared out"),
        ({"gpus_per_run": 2, "tasks_per_run": 4}, r"gpus_per_run=2 cannot be shared out"),
        ({"time_limit_minutes": 5, "signal_lead_seconds": 300}, r"shorter than the time limit"),
        ({"mem_per_node": "lots"}, r"mem_per_node must look like '64G'"),
        ({"partition": "a b"}, r"partition must be a word"),
        ({"extra_sbatch": ["--time=10"]}, r"may not set --time: use SlurmOptions.time_limit"),
        ({"extra_sbatch": ["--output=x"]}, r"may not set --output: submit_array sets it"),
        ({"extra_sbatch": ["-t10"]}, r"may not set -t: use SlurmOptions.time_limit_minutes"),
        ({"extra_sbatch": "--qos=high"}, r"extra_sbatch must be a list of strings"),
        ({"extra_sbatch": ["qos=high"]}, r"not an sbatch option"),
    ],
)
def test_bad_options_give_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        slurm.SlurmOptions(**kwargs)
    assert "\n" not in str(info.value)


def test_options_from_dict_and_their_sbatch_lines():
    options = slurm.SlurmOptions.from_dict(
        {"gpus_per_run": 8, "nodes_per_run": 2, "partition": "gpu",
         "extra_sbatch": ("--qos=high", "--account=lm")}
    )  # fmt: skip
    assert options.num_tasks == 8 and options.gpus_per_task == 1
    sbatch = options.sbatch_options()
    for expected in ("--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--gpus-per-task=1"):
        assert expected in sbatch
    assert "--signal=USR1@300" in sbatch and "--time=1440" in sbatch
    assert sbatch[-2:] == ["--qos=high", "--account=lm"]
    assert "--gpus-per-task=1" in options.srun_options()
    with pytest.raises(ValueError, match=r"Unknown Slurm option\(s\) \['time'\]"):
        slurm.SlurmOptions.from_dict({"time": 10})
    assert slurm.SlurmOptions.from_dict({"gpus_per_run": 2}).num_tasks == 2


@pytest.mark.parametrize(
    "runs, message",
    [
        ([], r"non-empty list"),
        ([("a", [], "w")], r"argv must be a non-empty list of strings"),
        ([("a", "python train.py", "w")], r"argv must be a non-empty list of strings"),
        ([("a", ["x"], "w1"), ("a", ["x"], "w2")], r"Run name 'a' appears twice"),
        ([("a", ["x"], "w"), ("b", ["x"], "w")], r"Workdir .*/w appears twice"),
        ([("a", ["x\ny"], "w")], r"a newline or NUL"),
    ],
)
def test_bad_runs_are_refused_before_anything_is_written(tmp_path, runs, message):
    with pytest.raises(ValueError, match=message):
        slurm.submit_array(runs, slurm.SlurmOptions(), tmp_path / "subs", cwd=tmp_path)
    assert not (tmp_path / "subs").exists()


def test_no_sbatch_on_the_path_says_how_to_start_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    runs = [("a", ["true"], tmp_path / "a")]
    with pytest.raises(slurm.SlurmUnavailable) as info:
        slurm.submit_array(runs, slurm.SlurmOptions(), tmp_path / "subs")
    message = str(info.value)
    assert "sbatch is not on the PATH" in message and "bash cluster/testbed/start.sh" in message
    assert "\n" not in message
    assert not (tmp_path / "subs").exists() and not (tmp_path / "a").exists()
    with pytest.raises(slurm.SlurmUnavailable, match="squeue is not on the PATH"):
        slurm.query(_fake_state_file(tmp_path))


def _fake_state_file(tmp_path):
    path = tmp_path / "job.json"
    runs = [{"task": 0, "name": "a", "workdir": str(tmp_path / "a"), "argv": ["true"]}]
    path.write_text(json.dumps({"job_id": "1", "submitted_at": 0.0, "runs": runs}))
    return path


# --- Against the cluster. --------------------------------------------------------------------


def test_array_runs_each_command_in_its_own_directory(slurm_cluster, jobs, tmp_path):
    submission = _submit(jobs, tmp_path, ["ok", "ok"], names=["first", "second"])
    states = _wait_final(submission)
    assert list(states) == ["first", "second"]
    for task, state in enumerate(states.values()):
        workdir = tmp_path / f"run{task}"
        assert (state.state, state.reason, state.attempts) == ("complete", "", 1)
        assert state.job == f"{submission.job_id}_{task}"
        env = _env(workdir, 0)
        assert env["SLURM_ARRAY_TASK_ID"] == str(task) and env["cwd"] == str(tmp_path)
        log = workdir / "slurm" / f"{submission.job_id}_{task}.out"
        assert state.log == log
        text = log.read_text()
        assert "hello from task 0" in text and "exited with status 0" in text
        assert _exit_codes(workdir) == [0]
    assert slurm.submissions(tmp_path / "submissions") == [submission.state_file]


def test_array_parallelism_keeps_the_other_runs_queued(slurm_cluster, jobs, tmp_path):
    options = slurm.SlurmOptions(array_parallelism=1)
    submission = _submit(jobs, tmp_path, ["wait_go", "ok"], options)
    _wait_until(lambda: (tmp_path / "run0" / "ready.0").exists(), "the first run to start")
    states = slurm.query(submission.state_file)
    assert (states["run0"].state, states["run1"].state) == ("running", "queued")
    assert states["run1"].reason == "JobArrayTaskLimit"
    (tmp_path / "run0" / "go").write_text("")
    states = _wait_final(submission)
    assert [s.state for s in states.values()] == ["complete", "complete"]


def test_status_prefers_the_programs_own_error_line_to_sruns(tmp_path):
    log = tmp_path / "1_0.out"
    log.write_text(
        "lmc: 1_0 attempt 1 on vm at 2025-01-01 00:00:00: 'python' 'train.py'\n"
        "train.py: No such file: /data/x.txt\n"
        "srun: error: vm: task 0: Exited with exit code 1\n"
        "lmc: 1_0 attempt 1 exited with status 1 at 2025-01-01 00:00:01\n"
    )
    assert slurm._last_error_line(log) == "train.py: No such file: /data/x.txt"
    log.write_text(
        "0: train.py: stopped\n1: Traceback (most recent call last):\n1: ValueError: x\n"
    )
    assert slurm._last_error_line(log) == "1: ValueError: x"
    log.write_text("step 5\nsrun: error: vm: task 0: Exited with exit code 2\n")
    assert slurm._last_error_line(log) == "srun: error: vm: task 0: Exited with exit code 2"


def test_failed_run_reports_its_exit_status_and_error(slurm_cluster, jobs, tmp_path):
    submission = _submit(jobs, tmp_path, ["fail"])
    state = _wait_final(submission)["run0"]
    assert state.state == "failed"
    assert state.reason == "exit status 1: ValueError: boom from the run"


def test_two_tasks_per_run_go_through_srun(slurm_cluster, jobs, tmp_path):
    submission = _submit(jobs, tmp_path, ["ok"], slurm.SlurmOptions(tasks_per_run=2))
    assert _wait_final(submission)["run0"].state == "complete"
    envs = [_env(tmp_path / "run0", rank) for rank in (0, 1)]
    assert [e["SLURM_PROCID"] for e in envs] == ["0", "1"]
    assert [e["SLURM_NTASKS"] for e in envs] == ["2", "2"]
    log = (tmp_path / "run0" / "slurm" / f"{submission.job_id}_0.out").read_text()
    assert "0: hello from task 0" in log and "1: hello from task 1" in log


def test_one_process_per_gpu_sees_only_its_own(slurm_cluster, jobs, tmp_path):
    if not any("gpu:" in gres for gres in _sinfo("%G")):
        pytest.skip("the cluster has no GPUs (the testbed declares 2 with LMC_SLURM_GPUS=2)")
    submission = _submit(jobs, tmp_path, ["ok"], slurm.SlurmOptions(gpus_per_run=2))
    assert _wait_final(submission)["run0"].state == "complete"
    devices = [_env(tmp_path / "run0", rank)["CUDA_VISIBLE_DEVICES"] for rank in (0, 1)]
    assert all(d and "," not in d for d in devices) and devices[0] != devices[1], devices


# How a preemption reaches a run, by the signal `scancel` sends and to whom (the four runs of
# one array, signalled at once: the requeue's wait is shared, not paid four times).
_PREEMPTIONS = {
    "job": (["--signal=USR1"], "10"),  # the job's steps: what the time limit's --signal=USR1@N does
    "batch-usr1": (["--signal=USR1", "--batch"], "10"),  # the batch script only: it passes it on
    "batch-term": (["--signal=TERM", "--batch"], "15"),
    "full-usr1": (["--signal=USR1", "--full"], "10"),  # both: the run stops once
}


def test_preempted_runs_are_requeued_and_resume(slurm_cluster, jobs, tmp_path):
    submission = _submit(jobs, tmp_path, ["preemptible"] * 4, names=list(_PREEMPTIONS))
    workdirs = [tmp_path / f"run{i}" for i in range(4)]
    ready = lambda: all((w / "ready.0").exists() for w in workdirs)  # noqa: E731
    _wait_until(ready, "the runs to start")
    for i, (scancel, _) in enumerate(_PREEMPTIONS.values()):
        subprocess.run(["scancel", *scancel, f"{submission.job_id}_{i}"], check=True, timeout=60)
    seen = set()
    states = _wait_final(submission, seen=seen)
    for (name, (_, signal_number)), workdir in zip(_PREEMPTIONS.items(), workdirs, strict=True):
        state = states[name]
        assert (state.state, state.attempts) == ("complete", 2), (name, state)
        assert _exit_codes(workdir) == [slurm.PREEMPTED_EXIT_CODE, 0], name
        assert (workdir / "checkpoint.0").read_text() == signal_number, name
        assert (workdir / "resumed.0").read_text() == "1", name  # SLURM_RESTART_COUNT
        requeued = [r for n, s, r in seen if n == name and s == "queued" and "requeued" in r]
        assert requeued and requeued[0].startswith("requeued after attempt 1 was preempted"), name
        log = state.log.read_text()
        assert "attempt 1 exited with status 75" in log and "attempt 2 exited with status 0" in log


def test_preemption_by_a_higher_priority_job_requeues_both_tasks(slurm_cluster, jobs, tmp_path):
    if "urgent" not in [p.rstrip("*") for p in _sinfo("%P")]:
        pytest.skip("needs the testbed's 'urgent' partition, which preempts jobs in 'debug'")
    cpus = int(_sinfo("%c")[0])
    options = slurm.SlurmOptions(tasks_per_run=2, cpus_per_task=cpus // 2, partition="debug")
    submission = _submit(jobs, tmp_path, ["preemptible"], options)
    workdir = tmp_path / "run0"
    ready = lambda: all((workdir / f"ready.{rank}").exists() for rank in (0, 1))  # noqa: E731
    _wait_until(ready, "both tasks to start")
    urgent = subprocess.run(
        ["sbatch", "--parsable", "--partition=urgent", f"--cpus-per-task={cpus}",
         f"--output={tmp_path}/urgent.out", "--wrap=echo urgent ran"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    jobs.append(urgent)
    state = _wait_final(submission)["run0"]
    assert (state.state, state.attempts) == ("complete", 2), state
    assert _exit_codes(workdir) == [slurm.PREEMPTED_EXIT_CODE, 0]
    for rank in (0, 1):
        assert (workdir / f"checkpoint.{rank}").read_text() == "15"  # SIGTERM
        assert (workdir / f"resumed.{rank}").read_text() == "1"
    assert (tmp_path / "urgent.out").read_text() == "urgent ran\n"


def test_time_limit_sends_sigusr1_ahead_and_the_run_resumes(slurm_cluster, jobs, tmp_path):
    # The shortest time limit Slurm has is a minute; a 59 s lead signals within Slurm's timer
    # resolution (up to about 30 s here).
    options = slurm.SlurmOptions(time_limit_minutes=1, signal_lead_seconds=59)
    submission = _submit(jobs, tmp_path, ["preemptible"], options)
    state = _wait_final(submission, seconds=WAIT_SECONDS)["run0"]
    assert (state.state, state.attempts) == ("complete", 2), state
    assert (tmp_path / "run0" / "checkpoint.0").read_text() == "10"


def test_sbatch_rejection_is_one_line_and_leaves_nothing(slurm_cluster, tmp_path):
    runs = [("a", ["true"], tmp_path / "a")]
    options = slurm.SlurmOptions(partition="no_such_partition")
    with pytest.raises(
        slurm.SlurmError, match=r"^sbatch failed: Batch job submission failed: Invalid partition"
    ) as info:
        slurm.submit_array(runs, options, tmp_path / "subs")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "subs").exists() and not (tmp_path / "a").exists()
    # Folders that were there stay, and nothing is left inside them.
    (tmp_path / "kept" / "subs").mkdir(parents=True)
    with pytest.raises(slurm.SlurmError, match="Invalid partition"):
        slurm.submit_array(runs, options, tmp_path / "kept" / "subs" / "new" / "deeper")
    assert list((tmp_path / "kept" / "subs").iterdir()) == [] and not (tmp_path / "a").exists()


def test_unreachable_controller_says_how_to_start_one(slurm_cluster, tmp_path, monkeypatch):
    conf = pathlib.Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if not conf.exists():
        pytest.skip(f"no {conf} to copy")
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("SlurmctldPort")]
    (tmp_path / "slurm.conf").write_text("\n".join([*lines, "SlurmctldPort=1"]) + "\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    with pytest.raises(slurm.SlurmUnavailable) as info:
        slurm.submit_array([("a", ["true"], tmp_path / "a")], slurm.SlurmOptions(), tmp_path / "s")
    message = str(info.value)
    assert message.startswith("the Slurm controller does not answer: Slurmctld")
    assert "bash cluster/testbed/start.sh" in message and "\n" not in message
    assert not (tmp_path / "s").exists()
