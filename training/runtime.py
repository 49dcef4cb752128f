"""What a training process needs from its surroundings: other processes, signals, a run lock.

* `initialize_distributed`: one run over several processes (`--config.distributed=True`). Under
  Slurm (`srun`), `jax.distributed.initialize()` reads everything from Slurm's environment.
  Elsewhere the processes are told by environment variables: JAX_COORDINATOR_ADDRESS
  (host:port of process 0, e.g. 127.0.0.1:12355), LMC_NUM_PROCESSES and LMC_PROCESS_ID.
  Before JAX connects them, the processes meet on a port of their own (the coordinator's port
  + 1; under Slurm one derived from the job id) and stay connected: a process that never
  starts is named after LMC_DISTRIBUTED_TIMEOUT_S seconds (default 60), and one that dies is
  noticed at once, ending the others with one line that names it, instead of JAX's abort after
  minutes (its own heartbeat, set to the same timeout, still catches a hung process).
* `check_same_config`: the processes of one run compare a hash of their configs; a process
  started with another config (say another seed) stops the run at once instead of training
  "replicated" parameters that differ.
* `Preemption`: SIGTERM (preemption) and SIGUSR1 (Slurm's warning ahead of a time limit) ask
  the loop to checkpoint the current step and stop with `Preempted`, which the command line
  turns into exit status `PREEMPTED_EXIT_CODE` (75) so that the scheduler requeues the run.
* `RunLock`: one training per run directory at a time; taken by process 0 only, so the
  processes of one run share it, and released by the kernel however the process ends.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import time

import jax
import ml_collections
import numpy as np

from training import rendezvous

PREEMPTED_EXIT_CODE = 75  # os.EX_TEMPFAIL; cluster.slurm requeues a run that exits with it
DEFAULT_TIMEOUT_S = 60
LOCK_FILE = ".lock"


class Preempted(Exception):
    """Training stopped on a signal after checkpointing; running it again resumes."""

    exit_status = PREEMPTED_EXIT_CODE  # what the command line exits with (cli.train_main)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer.") from None


def initialize_distributed() -> None:
    """Joins the run's other processes (call before anything else touches JAX).

    Raises:
      ValueError: bad environment variables (see the module docstring).
      ConnectionError: a process did not come within the timeout (the message names it).
    """
    timeout_s = _env_int("LMC_DISTRIBUTED_TIMEOUT_S") or DEFAULT_TIMEOUT_S
    num_processes = _env_int("LMC_NUM_PROCESSES")
    process_id = _env_int("LMC_PROCESS_ID")
    if (num_processes is None) != (process_id is None):
        raise ValueError("Set both LMC_NUM_PROCESSES and LMC_PROCESS_ID, or neither.")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"LMC_PROCESS_ID={process_id} is outside [0, {num_processes}).")
    if num_processes is None and "SLURM_NTASKS" in os.environ:
        num_processes, process_id = int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_PROCID"])
    if num_processes is None:
        raise ValueError(
            "--config.distributed=True needs Slurm (srun) or LMC_NUM_PROCESSES, LMC_PROCESS_ID "
            "and JAX_COORDINATOR_ADDRESS in the environment."
        )
    rendezvous.join(_rendezvous_address(), num_processes, process_id, timeout_s)
    jax.distributed.initialize(
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=timeout_s,
        shutdown_timeout_seconds=timeout_s,
    )


def _rendezvous_address() -> tuple[str, int]:
    """Where the processes meet before JAX connects them (see the module docstring)."""
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        host, _, port = coordinator.rpartition(":")
        return host.strip("[]"), int(port) + 1
    if "SLURM_JOB_ID" in os.environ:  # JAX takes 61440 + job id % 4096 for its coordinator
        host = _first_host(os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_NODELIST"])
        return host, 57344 + int(os.environ["SLURM_JOB_ID"]) % 4096
    raise ValueError("JAX_COORDINATOR_ADDRESS (host:port of process 0) is not set.")


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    head = re.match(r"([^,\[]*)(?:\[([^\],-]*))?", nodelist)
    return head[1] + (head[2] or "")


def check_same_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the processes whose config differs from process 0's."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).digest()
    mine = np.frombuffer(digest[:8], np.int64)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
    differ = [i for i, h in enumerate(every) if h != every[0]]
    if differ:
        raise ValueError(
            f"process(es) {differ} were started with another config than process 0 (compare "
            "their command lines, e.g. the seed): every process of a run needs the same config."
        )


class Preemption:
    """Turns SIGTERM and SIGUSR1 into a request to checkpoint and stop (a context manager).

    In a run of several processes a request is acted on only once all processes agree, at a
    step every process checks (`due`), so that they all save the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self) -> "Preemption":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        del frame
        self.requested = signal.Signals(signum).name

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop (every process returns the same answer)."""
        if jax.process_count() == 1:
            return self.requested is not None
        if step % 10:  # agreeing costs a collective: the processes check together every 10 steps
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        return bool(np.asarray(flags).any())


class RunLock:
    """An exclusive lock on a run directory, held by process 0 while it trains.

    `flock` locks go with the process: a killed or requeued run leaves nothing stale behind.

    Raises:
      ValueError: on entry, when another training holds the lock (the message says which).
    """

    def __init__(self, workdir: pathlib.Path):
        self._path = pathlib.Path(workdir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> "RunLock":
        if jax.process_index() != 0:
            return self
        file = open(self._path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ValueError(
                f"{self._path.parent} is being trained by {holder}: wait for it to finish, or "
                "stop it, or use another --workdir."
            ) from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps(_holder()) + "\n")
        file.flush()
        self._file = file
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
            self._file.close()
            self._file = None


def _holder() -> dict:
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.ctime()}
    if "SLURM_JOB_ID" in os.environ:
        holder["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return holder
