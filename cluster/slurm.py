r"""Submits runs to Slurm as one job array, and reads back how each run is doing.

  from cluster import slurm
  options = slurm.SlurmOptions(gpus_per_run=8, array_parallelism=4)
  submission = slurm.submit_array(
      [("size=200K", ["python", "train.py", "--config=...", "--workdir=runs/x/size=200K"],
        "runs/x/size=200K")],
      options, script_dir="runs/x/slurm")
  for run in slurm.query(submission.state_file).values():
      print(run.name, run.state, run.reason)    # queued / running / complete / failed

How an array task runs (the generated script, SCRIPT_DIR/SUBMISSION/job.sbatch):

* Task N reads line N + 1 of runs.txt (the run's workdir, then its command line, shell-quoted)
  and starts the command unchanged through `srun`: one process per task, one task per GPU by
  default, each task seeing only its own GPUs (CUDA_VISIBLE_DEVICES, set by Slurm). The run's
  processes form a job step, so Slurm signals them directly: SIGUSR1 `signal_lead_seconds` before
  the time limit (`--signal=USR1@N`), SIGTERM on preemption, and `scancel --signal=...`. The
  script passes a SIGUSR1 or SIGTERM sent to it alone (`scancel --batch`) on to the job step
  with scancel; not to srun, which would turn SIGTERM into SIGKILL for the run's processes (so
  `scancel --full --signal=TERM` kills a run without a checkpoint).
* A run that checkpointed on such a signal exits with PREEMPTED_EXIT_CODE (75, EX_TEMPFAIL). The
  script then requeues its array task (`scontrol requeue`): the same command starts again later
  with a fresh time limit, and train.py resumes from its newest checkpoint by itself. Any other
  exit status ends the task: 0 is complete, anything else failed. (On preemption Slurm requeues
  the task itself; the job is submitted with --requeue.)
* Each run's log is WORKDIR/slurm/JOBID_TASK.out, appended to by every attempt, and the script
  appends one JSON line per attempt to WORKDIR/slurm/attempts.jsonl (job, attempt, exit_code,
  time). `query` reads these and `squeue`. It does not need sacct: accounting is often closed to
  users, and the test cluster has none.

Only the standard library is imported (ml_collections and absl only inside `flag_defaults` and
`define_flags`, the --slurm.* flags of sweep.py and eval_compress.py): this module is cheap to
import from sweep.py and train.py.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PREEMPTED_EXIT_CODE = 75  # os.EX_TEMPFAIL: "checkpointed on SIGUSR1/SIGTERM; run me again"
START_HINT = "for a one-node test cluster on this machine: bash cluster/testbed/start.sh"
LOG_DIR = "slurm"  # under each run's workdir: the logs and attempts.jsonl
ATTEMPTS_FILE = "attempts.jsonl"
STATE_FILE = "job.json"  # in each submission's directory
SRUN_WAIT_SECONDS = 120  # after one task of a run ends, the others get this long to follow
STATES = ("queued", "running", "complete", "failed")

_COMMAND_TIMEOUT_SECONDS = 60
_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
_RUNNING |= {"SUSPENDED", "STOPPED"}
_ERROR_LINE = re.compile(r"error|exception|traceback|cancelled|killed|out of memory|oom", re.I)
# The one line the project's programs end a user's error with, 'train.py: No such file: x'
# (cli.run), after srun's task label in a run of several processes ('0: train.py: ...').
_PROGRAM_ERROR = re.compile(r"^(\d+: )?[\w.-]+\.py: \S")
# sbatch options that submit_array sets itself, and the SlurmOptions field that controls each.
_OWN_SBATCH_OPTIONS = {
    "--array": "array_parallelism",
    "-a": "array_parallelism",
    "--job-name": "job_name",
    "-J": "job_name",
    "--partition": "partition",
    "-p": "partition",
    "--nodes": "nodes_per_run",
    "-N": "nodes_per_run",
    "--ntasks": "tasks_per_run",
    "-n": "tasks_per_run",
    "--ntasks-per-node": "tasks_per_run",
    "--cpus-per-task": "cpus_per_task",
    "-c": "cpus_per_task",
    "--gpus-per-task": "gpus_per_run",
    "--gpus": "gpus_per_run",
    "-G": "gpus_per_run",
    "--gpus-per-node": "gpus_per_run",
    "--time": "time_limit_minutes",
    "-t": "time_limit_minutes",
    "--mem": "mem_per_node",
    "--signal": "signal_lead_seconds",
    "--output": None,
    "-o": None,
    "--error": None,
    "-e": None,
    "--open-mode": None,
    "--requeue": None,
    "--no-requeue": None,
    "--chdir": None,
    "-D": None,
    "--parsable": None,
    "--wrap": None,
}


class SlurmError(RuntimeError):
    """Slurm refused a request (sbatch rejected the job, squeue failed); the message is one line."""

    user_error = True  # cli.run prints it as one line


class SlurmUnavailable(SlurmError):
    """No Slurm here: its commands are not on the PATH, or its controller does not answer."""


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Resources and limits of every run in an array; validated on construction.

    Attributes:
      partition: the partition to run in; None for the cluster's default.
      gpus_per_run: GPUs per run, in total over its nodes; 0 for none.
      nodes_per_run: nodes per run.
      tasks_per_run: processes per run, in total over its nodes; None for one per GPU (with GPUs)
        or 1. The GPUs are shared out evenly: each task sees only its own
        (gpus_per_run / tasks_per_run of them).
      cpus_per_task: CPUs per process.
      time_limit_minutes: each attempt's time limit. Generous by default: a run that hits it is
        signalled, checkpoints and is requeued, but a long run that keeps being cut short wastes
        its warm-up each time.
      mem_per_node: memory per node in Slurm's syntax ('64G'); None asks for none.
      array_parallelism: at most this many runs at once; None for no limit.
      signal_lead_seconds: SIGUSR1 goes to the runs' processes this long before the time limit
        (Slurm may send it up to a minute early); 0 sends none.
      job_name: the array's name in squeue.
      extra_sbatch: further sbatch options, each one string ('--account=abc', '--qos=high').
    """

    partition: str | None = None
    gpus_per_run: int = 0
    nodes_per_run: int = 1
    tasks_per_run: int | None = None
    cpus_per_task: int = 1
    time_limit_minutes: int = 24 * 60
    mem_per_node: str | None = None
    array_parallelism: int | None = None
    signal_lead_seconds: int = 300
    job_name: str = "lmc"
    extra_sbatch: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.extra_sbatch, str) or not isinstance(self.extra_sbatch, Iterable):
            raise ValueError(
                f"SlurmOptions.extra_sbatch must be a list of strings, got {self.extra_sbatch!r}."
            )
        object.__setattr__(self, "extra_sbatch", tuple(self.extra_sbatch))
        self._check_counts()
        for name in ("partition", "job_name", "mem_per_node"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, str) or not re.fullmatch(r"\S+", value)
            ):
                raise ValueError(f"SlurmOptions.{name} must be a word, got {value!r}.")
        if self.mem_per_node is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem_per_node):
            raise ValueError(
                f"SlurmOptions.mem_per_node must look like '64G' or '4000M', "
                f"got {self.mem_per_node!r}."
            )
        for option in self.extra_sbatch:
            _check_extra_option(option)

    def _check_counts(self) -> None:
        _check_int("gpus_per_run", self.gpus_per_run, 0)
        _check_int("nodes_per_run", self.nodes_per_run, 1)
        if self.tasks_per_run is not None:
            _check_int("tasks_per_run", self.tasks_per_run, 1)
        _check_int("cpus_per_task", self.cpus_per_task, 1)
        _check_int("time_limit_minutes", self.time_limit_minutes, 1)
        if self.array_parallelism is not None:
            _check_int("array_parallelism", self.array_parallelism, 1)
        _check_int("signal_lead_seconds", self.signal_lead_seconds, 0)
        if self.signal_lead_seconds >= 60 * self.time_limit_minutes:
            raise ValueError(
                f"SlurmOptions.signal_lead_seconds={self.signal_lead_seconds} must be shorter "
                f"than the time limit ({self.time_limit_minutes} min)."
            )
        if self.signal_lead_seconds > 65535:
            raise ValueError("SlurmOptions.signal_lead_seconds must be at most 65535 (Slurm's).")
        tasks, nodes, gpus = self.num_tasks, self.nodes_per_run, self.gpus_per_run
        if tasks % nodes:
            raise ValueError(f"{tasks} tasks per run do not split evenly over {nodes} nodes.")
        if gpus and gpus % tasks:
            raise ValueError(
                f"gpus_per_run={gpus} cannot be shared out evenly over {tasks} tasks per run."
            )
        if gpus and gpus % nodes:
            raise ValueError(f"gpus_per_run={gpus} does not split evenly over {nodes} nodes.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SlurmOptions":
        """Options from a {field: value} dict, e.g. a sweep file's; unknown keys are an error.

        Raises:
          ValueError: an unknown key or a bad value.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown Slurm option(s) {unknown}; known: {', '.join(known)}.")
        return cls(**values)

    @property
    def num_tasks(self) -> int:
        """Processes per run: tasks_per_run, else one per GPU, else 1."""
        if self.tasks_per_run is not None:
            return self.tasks_per_run
        return self.gpus_per_run or 1

    @property
    def gpus_per_task(self) -> int:
        return self.gpus_per_run // self.num_tasks

    def _task_options(self) -> list[str]:
        """Nodes, tasks, CPUs and GPUs per task: what sbatch and srun are both told."""
        nodes, tasks = self.nodes_per_run, self.num_tasks
        options = [
            f"--nodes={nodes}",
            f"--ntasks={tasks}",
            f"--ntasks-per-node={tasks // nodes}",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        if self.gpus_per_run:
            options.append(f"--gpus-per-task={self.gpus_per_task}")
        return options

    def sbatch_options(self) -> list[str]:
        """The resource and limit options of one array task (not --array, --output...)."""
        options = [
            f"--job-name={self.job_name}",
            *self._task_options(),
            f"--time={self.time_limit_minutes}",
        ]
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.mem_per_node:
            options.append(f"--mem={self.mem_per_node}")
        if self.signal_lead_seconds:
            options.append(f"--signal=USR1@{self.signal_lead_seconds}")
        return options + list(self.extra_sbatch)

    def srun_options(self) -> list[str]:
        """Options of the srun that starts a run's processes inside its array task."""
        # Slurm 22.05 does not pass --cpus-per-task on from sbatch to srun: say it all again.
        options = [
            *self._task_options(),
            # A task's exit must not kill the others at once: on a signal they all checkpoint,
            # then exit, and the first to exit would cut the rest short.
            "--kill-on-bad-exit=0",
            f"--wait={SRUN_WAIT_SECONDS}",
        ]
        if self.num_tasks > 1:
            options.append("--label")  # prefix each log line with its task number
        return options


def _check_extra_option(option: Any) -> None:
    if not isinstance(option, str) or not option.startswith("-") or "\n" in option:
        raise ValueError(f"extra_sbatch: {option!r} is not an sbatch option like '--qos=x'.")
    # '--time=10', '--time 10', '-t10', '-t 10': the option's name.
    key = option[:2] if not option.startswith("--") else re.split(r"[=\s]", option)[0]
    if key in _OWN_SBATCH_OPTIONS:
        field = _OWN_SBATCH_OPTIONS[key]
        how = f"use SlurmOptions.{field}" if field else "submit_array sets it itself"
        raise ValueError(f"extra_sbatch may not set {key}: {how}.")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SlurmOptions.{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"SlurmOptions.{name} must be at least {minimum}, got {value}.")


@dataclasses.dataclass(frozen=True)
class Submission:
    """A submitted array: its job id and the state file that `query` reads."""

    job_id: str
    state_file: pathlib.Path


@dataclasses.dataclass(frozen=True)
class RunState:
    """Where one run of a submitted array stands.

    Attributes:
      name: the run's name.
      workdir: the run's directory (absolute).
      job: its array task, 'JOBID_TASK'.
      state: 'queued', 'running', 'complete' (its command exited 0) or 'failed'.
      reason: why it is queued (Slurm's reason: 'Priority', 'Resources', 'BeginTime' after a
        requeue...) or why it failed (the exit status and the log's last error line); else ''.
      attempts: attempts that have ended (a requeued run has had one more).
      log: the run's log file, WORKDIR/slurm/JOBID_TASK.out.
    """

    name: str
    workdir: pathlib.Path
    job: str
    state: str
    reason: str
    attempts: int
    log: pathlib.Path


def check_available() -> None:
    """Checks that Slurm's commands are on the PATH and that its controller answers.

    Raises:
      SlurmUnavailable: with one line saying what is missing and how to start a test cluster.
    """
    for command in ("sbatch", "squeue", "scontrol"):
        if shutil.which(command) is None:
            raise SlurmUnavailable(f"Slurm's {command} is not on the PATH ({START_HINT}).")
    result = _run(["scontrol", "ping"])
    if result.returncode != 0 or " is UP" not in result.stdout:
        # 'Slurmctld(primary) at HOST is DOWN', then a banner of asterisks.
        lines = [line for line in result.stdout.splitlines() if "Slurmctld" in line]
        answer = lines[0].strip() if lines else _one_line(result)
        raise SlurmUnavailable(f"the Slurm controller does not answer: {answer} ({START_HINT}).")


def submit_array(
    runs: Sequence[tuple[str, Sequence[str], str | os.PathLike]],
    options: SlurmOptions,
    script_dir: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
) -> Submission:
    """Submits one array task per run, all with the same options, in one sbatch call.

    Args:
      runs: (name, argv, workdir) per run: its unique name, its command line (run as it is,
        e.g. ['python', 'train.py', '--config=...', '--workdir=...']) and its directory (the log
        and attempts.jsonl go to WORKDIR/slurm/). Relative workdirs are relative to `cwd`.
      options: resources and limits of each run.
      script_dir: where the submission's files go, in a new subdirectory per submission: the
        sbatch script, runs.txt and the state file job.json.
      cwd: the directory the commands run in; the current one if None.

    Returns:
      The job id and the state file for `query`.

    Raises:
      ValueError: no runs, repeated names or workdirs, an empty command, or a newline in one.
      SlurmUnavailable: no sbatch, or its controller does not answer; nothing was submitted.
      SlurmError: sbatch rejected the job (its message); nothing was submitted.
    """
    if not isinstance(options, SlurmOptions):
        raise TypeError(f"options must be a SlurmOptions, got {type(options).__name__}.")
    cwd = pathlib.Path(cwd or os.getcwd()).resolve()
    checked = _check_runs(runs, cwd)
    script_dir = pathlib.Path(script_dir)
    if "%" in str(script_dir.resolve()):
        raise ValueError(f"script_dir {script_dir} has a '%', which sbatch would expand.")
    check_available()
    made_dirs = _make_dirs(script_dir)  # removed again, with the runs' log dirs, on a failure
    directory = pathlib.Path(
        tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=script_dir)
    ).resolve()
    try:
        command = _write_submission(directory, checked, options, cwd, made_dirs)
        job_id = _sbatch(command, cwd)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        for made in sorted(made_dirs, key=lambda d: len(d.absolute().parts), reverse=True):
            with contextlib.suppress(OSError):  # only what is empty: what we made, deepest first
                made.rmdir()
        raise
    state = {
        "job_id": job_id,
        "submitted_at": time.time(),
        "cwd": str(cwd),
        "sbatch": command,
        "options": dataclasses.asdict(options),
        "runs": [
            {"task": task, "name": name, "workdir": str(workdir), "argv": argv}
            for task, (name, argv, workdir) in enumerate(checked)
        ],
    }
    state_file = directory / STATE_FILE
    try:
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(state_file)
    except OSError:
        _run(["scancel", job_id])  # no job that nothing tracks
        raise
    return Submission(job_id=job_id, state_file=state_file)


def _write_submission(directory, checked, options, cwd, made_dirs) -> list[str]:
    """Writes runs.txt, the task links and job.sbatch; returns the sbatch command line."""
    (directory / "tasks").mkdir()
    lines = []
    for task, (_, argv, workdir) in enumerate(checked):
        log_dir = workdir / LOG_DIR
        made_dirs += _make_dirs(log_dir)
        # sbatch takes one --output pattern for the array; this link makes task N's output
        # land in its own run's directory.
        (directory / "tasks" / str(task)).symlink_to(log_dir)
        lines.append(shlex.join([str(workdir), *argv]))
    (directory / "runs.txt").write_text("\n".join(lines) + "\n")
    array = f"0-{len(checked) - 1}"
    if options.array_parallelism:
        array += f"%{options.array_parallelism}"
    command = [
        "sbatch",
        "--parsable",
        f"--array={array}",
        *options.sbatch_options(),
        "--requeue",
        "--open-mode=append",  # every attempt of a run writes to the same log
        f"--output={directory}/tasks/%a/%A_%a.out",
        f"--chdir={cwd}",
        str(directory / "job.sbatch"),
    ]
    (directory / "job.sbatch").write_text(_script(options, directory, command))
    return command


def _sbatch(command: list[str], cwd: pathlib.Path) -> str:
    """Runs sbatch --parsable; returns the job id."""
    result = _run(command, cwd=cwd)
    if result.returncode != 0:
        message = f"sbatch failed: {_one_line(result)}"
        if "contact slurm controller" in message.lower():
            raise SlurmUnavailable(f"{message} ({START_HINT}).")
        raise SlurmError(message)
    job_id = result.stdout.strip().split(";")[0]  # 'JOBID' or 'JOBID;CLUSTER'
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed {result.stdout.strip()!r}, not a job id.")
    return job_id


def _make_dirs(path: pathlib.Path) -> list[pathlib.Path]:
    """Makes `path` and its missing parents; returns those it made, deepest first."""
    made = []
    while not path.exists():
        made.append(path)
        path = path.parent
    if made:
        made[0].mkdir(parents=True, exist_ok=True)
    return made


def _check_runs(runs, cwd: pathlib.Path) -> list[tuple[str, list[str], pathlib.Path]]:
    if isinstance(runs, (str, bytes)) or not runs:
        raise ValueError("submit_array needs a non-empty list of (name, argv, workdir) runs.")
    checked, names, workdirs = [], set(), set()
    for run in runs:
        if not isinstance(run, (tuple, list)) or len(run) != 3:
            raise ValueError(f"A run is (name, argv, workdir), got {run!r}.")
        name, argv, workdir = run
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"Run {name!r}: argv must be a non-empty list of strings.")
        workdir = (cwd / workdir).resolve()
        for text in (str(name), str(workdir), *argv):
            if "\n" in text or "\0" in text:
                raise ValueError(f"Run {name!r}: a newline or NUL in {text!r}.")
        if name in names:
            raise ValueError(f"Run name {name!r} appears twice.")
        if workdir in workdirs:
            raise ValueError(f"Workdir {workdir} appears twice.")
        names.add(name)
        workdirs.add(workdir)
        checked.append((str(name), list(argv), workdir))
    return checked


def _script(options: SlurmOptions, directory: pathlib.Path, sbatch: list[str]) -> str:
    """The batch script of every array task (bash)."""
    srun = shlex.join(["srun", *options.srun_options()])
    runs = shlex.quote(str(directory / "runs.txt"))
    attempts = f"$workdir/{LOG_DIR}/{ATTEMPTS_FILE}"
    return f"""#!/bin/bash
# Generated by cluster/slurm.py and submitted as
#   {shlex.join(sbatch)}
# Array task N runs line N + 1 of runs.txt: the run's workdir, then its command line.
set -uo pipefail
export PYTHONUNBUFFERED=1
runs={runs}
task=${{SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task}}
line=$(sed -n "$((task + 1))p" "$runs")
if [[ -z $line ]]; then
  echo "lmc: no line $((task + 1)) in $runs" >&2
  exit 2
fi
eval "set -- $line"
workdir=$1
shift
job=${{SLURM_ARRAY_JOB_ID}}_$task
attempt=$((${{SLURM_RESTART_COUNT:-0}} + 1))
echo "lmc: $job attempt $attempt on $(hostname) at $(date '+%F %T'): ${{*@Q}}"
# Slurm signals the run's processes (the job step) itself: the time limit's --signal=USR1@N,
# preemption's SIGTERM, `scancel --signal=SIG JOB`. A signal sent to this script alone
# (`scancel --batch`) is passed on to the job step the same way. Not to srun: srun turns a
# SIGTERM into SIGKILL for the run's processes, which would stop them without a checkpoint.
forward() {{
  echo "lmc: $job: the batch script got SIG$1; passing it on to the run" >&2
  scancel --signal="$1" "$SLURM_JOB_ID" || echo "lmc: $job: scancel --signal=$1 failed" >&2
}}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
{srun} "$@" &
step=$!
while true; do
  wait "$step"
  code=$?
  kill -0 "$step" 2>/dev/null || break
done
printf '{{"job": "%s", "attempt": %d, "exit_code": %d, "time": %d}}\\n' \\
  "$job" "$attempt" "$code" "$(date +%s)" >>"{attempts}"
echo "lmc: $job attempt $attempt exited with status $code at $(date '+%F %T')"
if ((code == {PREEMPTED_EXIT_CODE})); then
  echo "lmc: requeueing $job: it exited with {PREEMPTED_EXIT_CODE} (preempted; it resumes)"
  scontrol requeue "$job" || echo "lmc: scontrol requeue $job failed" >&2
fi
exit "$code"
"""


def submissions(script_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The state files of the submissions under `script_dir`, oldest first."""
    files = pathlib.Path(script_dir).glob(f"*/{STATE_FILE}")
    return sorted(files, key=lambda f: json.loads(f.read_text())["submitted_at"])


def query(submitted: Submission | str | os.PathLike | Sequence) -> dict[str, RunState]:
    """Where each run of one or more submissions stands, from squeue and the runs' own files.

    Args:
      submitted: a Submission or its state file, or a list of them; for a run submitted more
        than once, the later submission's task counts.

    Returns:
      {run name: RunState}, in the order the runs were first submitted.

    Raises:
      SlurmUnavailable: no squeue, or the controller does not answer.
    """
    if isinstance(submitted, (Submission, str, os.PathLike)):
        submitted = [submitted]
    paths = [s.state_file if isinstance(s, Submission) else pathlib.Path(s) for s in submitted]
    states = [json.loads(path.read_text()) for path in paths]
    states.sort(key=lambda s: s["submitted_at"])
    result: dict[str, RunState] = {}
    for state in states:
        queue = _squeue(state["job_id"])
        for run in state["runs"]:
            job = f"{state['job_id']}_{run['task']}"
            result[run["name"]] = _run_state(run, job, queue.get(run["task"]))
    return result


def _squeue(job_id: str) -> dict[int, tuple[str, str]]:
    """{array task: (Slurm state, reason)} of the tasks squeue still knows."""
    if shutil.which("squeue") is None:
        raise SlurmUnavailable(f"Slurm's squeue is not on the PATH ({START_HINT}).")
    result = _run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={job_id}",
                   "--format=%i|%T|%r"])  # fmt: skip
    if result.returncode != 0:
        if "invalid job id" in result.stderr.lower():
            return {}  # finished long enough ago that Slurm forgot it
        raise SlurmUnavailable(f"squeue failed: {_one_line(result)} ({START_HINT}).")
    tasks = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or "_" not in parts[0]:
            continue
        for task in _array_tasks(parts[0].split("_", 1)[1]):
            tasks[task] = (parts[1], parts[2])
    return tasks


def _array_tasks(spec: str) -> list[int]:
    """Task numbers from squeue's '3', or '[0-3,7%2]' for tasks not yet split off."""
    spec = spec.strip("[]").split("%")[0]
    tasks = []
    for part in filter(None, spec.split(",")):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            tasks.extend(range(int(low), int(high or low) + 1))
    return tasks


def _run_state(run: dict[str, Any], job: str, queued: tuple[str, str] | None) -> RunState:
    workdir = pathlib.Path(run["workdir"])
    log = workdir / LOG_DIR / f"{job}.out"
    records = _attempts(workdir / LOG_DIR / ATTEMPTS_FILE, job)
    last = records[-1]["exit_code"] if records else None
    slurm_state, slurm_reason = queued or ("", "")
    state = reason = ""
    if slurm_state in _QUEUED:
        state, reason = "queued", slurm_reason
        if last == PREEMPTED_EXIT_CODE:
            reason = f"requeued after attempt {len(records)} was preempted ({slurm_reason})"
    elif slurm_state in _RUNNING:
        state = "running"
    elif last == 0:
        state = "complete"
    elif last == PREEMPTED_EXIT_CODE:
        state = "failed"
        reason = f"exited with {last} (preempted) but was not requeued: submit it again"
    elif last is not None:
        signal = f" (signal {last - 128})" if last > 128 else ""
        state, reason = "failed", f"exit status {last}{signal}: {_last_error_line(log)}"
    else:
        state = "failed"
        what = slurm_state or "unknown to squeue"
        reason = f"{what}, no exit status recorded: {_last_error_line(log)}"
    return RunState(
        name=run["name"],
        workdir=workdir,
        job=job,
        state=state,
        reason=reason,
        attempts=len(records),
        log=log,
    )


def _attempts(path: pathlib.Path, job: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a full disk or a killed script
        if record.get("job") == job:
            records.append(record)
    return records


def _last_error_line(log: pathlib.Path, max_chars: int = 200) -> str:
    """The log's last line that looks like an error, else its last line; '' without a log.

    The run's own lines come first: srun's 'srun: error: ... Exited with exit code 1' only
    repeats the exit status, and the program's own error line (a traceback's last line, or
    train.py's one-line message) says why.
    """
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return f"no log at {log}"
    lines = [line.strip() for line in lines if line.strip()]
    lines = [line for line in lines if not line.startswith("lmc: ")] or lines
    own = [line for line in lines if not line.startswith("srun: ")]
    own_errors = [line for line in own if _ERROR_LINE.search(line) or _PROGRAM_ERROR.match(line)]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    line = (own_errors or errors or own or lines or [""])[-1]
    return line[:max_chars]


def _run(command: list[str], cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise SlurmUnavailable(f"Slurm's {command[0]} is not on the PATH ({START_HINT}).") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(
            f"{command[0]} did not answer in {_COMMAND_TIMEOUT_SECONDS} s ({START_HINT})."
        ) from None


def _one_line(result: subprocess.CompletedProcess) -> str:
    """The last line a command printed, without its 'sbatch: error: ' prefix."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    if not lines:
        return f"exit status {result.returncode}"
    return re.sub(r"^\w+: (error|fatal): ", "", lines[-1])


def flag_defaults():
    """The --slurm.* flags of a program that submits to Slurm (sweep.py, eval_compress.py):
    SlurmOptions' fields with their defaults, as an ml_collections ConfigDict (locked)."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.partition = ""  # '' for the cluster's default partition
    c.gpus_per_run = 0
    c.nodes_per_run = 1
    c.tasks_per_run = 0  # 0: one process per GPU, or 1 without GPUs
    c.cpus_per_task = 1
    c.time_limit_minutes = 24 * 60
    c.mem_per_node = ""  # e.g. '64G'; '' asks for none
    c.array_parallelism = 0  # 0: no limit
    c.signal_lead_seconds = 300  # SIGUSR1 this long before the time limit
    c.job_name = "lmc"
    c.extra_sbatch = ""  # further sbatch options, space separated: '--qos=high --account=x'
    return c.lock()


def define_flags(help_text: str = "Slurm options (--mode=slurm).") -> None:
    """Defines --slurm.* (`flag_defaults`) for the calling program."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_dict("slurm", flag_defaults(), help_text)


def given_flags(flag_values) -> dict[str, Any]:
    """The --slurm.* flags given on the command line, {option: value}, with the flags' way of
    saying None ('' and 0 for the fields that may be None) and extra_sbatch split as a shell
    would split it: ready for `SlurmOptions.from_dict`."""
    given = {
        name.split(".", 1)[1]: flag_values[name].value
        for name in flag_values
        if name.startswith("slurm.") and flag_values[name].present
    }
    out = {}
    for key, value in given.items():
        if key == "extra_sbatch":
            out[key] = tuple(shlex.split(value))
        elif value in ("", 0) and key in ("partition", "mem_per_node", "tasks_per_run",
                                          "array_parallelism"):  # fmt: skip
            out[key] = None
        else:
            out[key] = value
    return out
