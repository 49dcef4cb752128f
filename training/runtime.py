"""What a training process needs from its surroundings: other processes, signals, a run lock.

* `initialize_distributed`: one run over several processes (`--config.distributed=True`). Under
  Slurm (`srun`), `jax.distributed.initialize()` reads everything from Slurm's environment.
  Elsewhere the processes are told by environment variables: JAX_COORDINATOR_ADDRESS
  (host:port of process 0, e.g. 127.0.0.1:12355), LMC_NUM_PROCESSES and LMC_PROCESS_ID.
  Before JAX connects them, the processes meet on a port of their own (the coordinator's port
  + 1; under Slurm one derived from the job id) and stay connected: a process that never
  starts is named after LMC_DISTRIBUTED_TIMEOUT_S seconds (default 60), and one that dies is
  noticed at once, ending the others with one line that names it, instead of JAX's abort and
  its log (JAX's own heartbeat, `HEARTBEAT_TIMEOUT_S`, still catches a hung process).
* `check_same_config`: the processes of one run compare a hash of their configs; a process
  started with another config (say another seed) stops the run at once instead of training
  "replicated" parameters that differ.
* `Preemption`: SIGTERM (preemption), SIGUSR1 (Slurm's warning ahead of a time limit) and a
  first Ctrl-C ask the loop to checkpoint the current step and stop with `Preempted`, which the
  command line turns into exit status `PREEMPTED_EXIT_CODE` (75) so that the scheduler requeues
  the run, or 130 after a Ctrl-C. While nothing is worth a checkpoint (start-up, compilation,
  the first step, the final test) a signal stops the process at once; a second Ctrl-C always
  does.
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
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

import cli
from training import rendezvous

PREEMPTED_EXIT_CODE = 75  # os.EX_TEMPFAIL; cluster.slurm requeues a run that exits with it
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT  # 130, as a shell reports a Ctrl-C
DEFAULT_TIMEOUT_S = 60
# JAX's own watch on the processes: one that stops answering (hung, stopped, its host gone
# without closing its connections) ends the run after this long. A process's heartbeat is sent
# by a thread of its own, so a long compilation does not miss it.
HEARTBEAT_TIMEOUT_S = 10
LOCK_FILE = ".lock"


class Preempted(BaseException):
    """Training stopped on a signal; running the same command again resumes.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows the stop.

    Args:
      message: the line the command line prints.
      exit_status: what the command line exits with (train_main): 75 or 130.
      alone: this process stops on its own, without a checkpoint agreed with the run's other
        processes (they are told to stop too).
    """

    def __init__(self, message: str, exit_status: int = PREEMPTED_EXIT_CODE, alone=False):
        super().__init__(message)
        self.exit_status = exit_status
        self.alone = alone


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
        heartbeat_timeout_seconds=min(timeout_s, HEARTBEAT_TIMEOUT_S),
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


def memory_bytes() -> tuple[int | None, int]:
    """(memory of one local accelerator, or None where the devices are the CPU; the host's RAM)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit"), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
    """Turns SIGTERM, SIGUSR1 and Ctrl-C (SIGINT) into a stop (a context manager).

    While the loop holds work that no checkpoint has (`at_risk(True)`, from the end of the first
    step of an invocation until the last checkpoint is written), a signal is a request: the loop
    checkpoints the current step at the next step boundary (`should_stop`) and raises
    `Preempted`. In a run of several processes a request is acted on only once all processes
    agree, at a step every process checks, so that they all save the same step.

    Otherwise (starting, compiling, restoring, the first step, the final test) there is nothing
    to save, and a signal stops the process at once without a checkpoint: the handler raises
    `Preempted` in the main thread, and if the main thread sits in native code that does not
    return to Python (an XLA compilation), a watcher thread ends the process after `GRACE_S`
    with the same line and status. A second Ctrl-C always ends the process at once.

    Exit statuses: `PREEMPTED_EXIT_CODE` (75) for SIGTERM and SIGUSR1, so that the scheduler
    requeues the run; `INTERRUPTED_EXIT_CODE` (130) for Ctrl-C.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    GRACE_S = 1.0  # how long the main thread has to take a signal before the watcher ends it
    EXIT_GRACE_S = 10.0  # how long the main thread has to exit once it took a signal

    def __init__(self):
        self.requested: str | None = None
        self.exit_status = PREEMPTED_EXIT_CODE
        self.doing = "starting"  # what the process does while nothing is at risk (for messages)
        self._at_risk = False
        self._interrupts = 0
        self._raised: Preempted | None = None
        self._active = False  # inside the `with`: the watcher may end the process
        self._cleanups: list = []
        self._previous = {}
        self._previous_wakeup = -1
        self._previous_unraisable = sys.unraisablehook
        self._pipe: tuple[int, int] | None = None

    def __enter__(self) -> "Preemption":
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        # Python runs signal handlers in the main thread between bytecodes only; the wakeup
        # descriptor tells the watcher at once, even while the main thread is in native code.
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._previous_unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False  # a stop that left the `with` is the caller's
        for cleanup in self._cleanups:
            rendezvous.AT_EXIT.remove(cleanup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self._previous_unraisable
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self._pipe[1])  # the watcher reads the end of the pipe and closes the other end

    def at_risk(self, holding: bool, doing: str = "") -> None:
        """Declares whether the process holds work that only a checkpoint would keep.

        Args:
          holding: True once a step of this invocation is done, False once the last
            checkpoint is written.
          doing: what the process does while nothing is at risk ('testing'), for the stop line.

        Raises:
          Preempted: `holding` is False and a signal asked to stop before; or a stop raised
            while nothing was at risk was swallowed (by a `__del__` or a garbage-collection
            callback) and the main thread went on: it is raised again here, before anything is
            at risk, not left to the watcher's `EXIT_GRACE_S` nor turned into a checkpoint.
        """
        if self._raised is not None:
            raise self._raised
        self._at_risk = holding
        self.doing = doing or self.doing
        if not holding and self.requested is not None:
            self._raised = self._unsaved_stop()
            raise self._raised

    def on_abort(self, cleanup) -> None:
        """Registers `cleanup()` to run before the process is ended without unwinding (by the
        watcher here, or by `rendezvous` when another process of the run dies or stops)."""
        self._cleanups.append(cleanup)
        rendezvous.AT_EXIT.append(cleanup)

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop (every process returns the same answer)."""
        if jax.process_count() == 1:
            return self.requested is not None
        if step % 10:  # agreeing costs a collective: the processes check together every 10 steps
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        return bool(np.asarray(flags).any())

    def stopped(self, step: int) -> "Preempted":
        """The exception to raise once `step` is checkpointed on a request."""
        return Preempted(
            f"stopped by {self.requested or 'another process'} at step {step} with a "
            "checkpoint: run the same command again to resume",
            self.exit_status,
        )

    def _request(self, signum: int) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            if signum == signal.SIGINT:
                self.exit_status = INTERRUPTED_EXIT_CODE

    def _unsaved_stop(self) -> "Preempted":
        return Preempted(
            f"stopped by {self.requested} while {self.doing}, with nothing new to checkpoint: "
            "run the same command again to resume",
            self.exit_status,
            alone=True,
        )

    def _handle(self, signum, frame) -> None:
        """In the main thread: notes the request, and stops at once if nothing is at risk."""
        del frame
        self._request(signum)
        if not self._at_risk and self._raised is None:
            self._raised = self._unsaved_stop()
            raise self._raised

    def _unraisable(self, unraisable) -> None:
        """`sys.unraisablehook` inside the `with`: a stop raised where Python only reports it and
        goes on (JAX's garbage-collection callback, a `__del__`) is not reported: its one line
        comes when `at_risk` raises it again or the watcher ends the process."""
        if unraisable.exc_value is None or unraisable.exc_value is not self._raised:
            self._previous_unraisable(unraisable)

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while data := pipe.read(64):
                for signum in data:
                    if signum in self.SIGNALS:
                        self._watched(signum)

    def _watched(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                _exit_now(
                    "interrupted again: stopped at once", INTERRUPTED_EXIT_CODE, self._cleanups
                )
        self._request(signum)
        if not self._at_risk:
            threading.Thread(target=self._backstop, daemon=True).start()

    def _backstop(self) -> None:
        """Ends the process if the main thread did not take the signal (it is in native code),
        or took it but did not leave the `with`: stuck, or the exception was raised where Python
        only reports it and goes on (a `__del__`, a garbage-collection callback such as JAX's),
        so the stop line is printed here."""
        time.sleep(self.GRACE_S)
        if self._active and self._raised is None and not self._at_risk:
            stop = self._unsaved_stop()
            _exit_now(str(stop), stop.exit_status, self._cleanups)
        if self._raised is not None:
            time.sleep(self.EXIT_GRACE_S)
            if self._active:  # taken, but swallowed (raised in a __del__ or a callback) or stuck
                _exit_now(str(self._raised), self._raised.exit_status, self._cleanups)


def _exit_now(message: str | None, status: int, cleanups) -> None:
    """Ends the process at once: tells the other processes, prints `message`, cleans up."""
    rendezvous.leave(status)
    if message:
        print(f"{cli.program_name()}: {message}", file=sys.stderr, flush=True)
    for cleanup in cleanups:
        with contextlib.suppress(Exception):
            cleanup()
    os._exit(status)


def train_main(
    argv: list[str],
    train: Callable[[Any, str], dict],
    report: Callable[[dict], str],
    check_config: Callable[[Any], None] = lambda config: None,
) -> None:
    """The `main` of a trainer (train.py, train_addition.py): --config and --workdir in, the
    report of `train` printed by process 0.

    A `Preempted` (stopped on a signal, run again to resume) ends the program with its
    `exit_status` and message; one with `alone` set (stopped without a checkpoint agreed by the
    run's processes) stops the run's other processes with the same status.

    Raises:
      app.UsageError: stray arguments, no --workdir, or a config `check_config` refuses.
    """
    cli.no_arguments(argv)
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    check_config(flags.FLAGS.config)
    cli.quiet_logging()
    try:
        metrics = train(flags.FLAGS.config, flags.FLAGS.workdir)
    except Preempted as e:
        rendezvous.leave(e.exit_status if e.alone else None)
        print(f"{cli.program_name()}: {e}", file=sys.stderr, flush=True)
        if e.alone and rendezvous.joined():  # JAX's shutdown at exit would wait for the others
            sys.stdout.flush()
            os._exit(e.exit_status)
        sys.exit(e.exit_status)
    rendezvous.leave()
    if jax.process_index() == 0:
        print(report(metrics))


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
