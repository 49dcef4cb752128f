"""Runs the parts of a check, each in a child process with a time budget.

A part that hangs in a compile or is killed for memory costs that part only: the parent starts
each child in its own process session, at most `jobs` at a time and each after the parts it
depends on, and kills the whole session once the child's budget has passed. The child records
its progress in `WORK/parts/NAME.json` through a `Context` as it goes, so that the parent keeps
what a killed child reached; its output goes to `WORK/parts/NAME.log`, copied to the run's log.
"""

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

MIN_PART_S = 5.0  # a part is not started with less time left than this


class Skip(Exception):
    """The part cannot run here (the message says why)."""


def state_path(work: str, name: str) -> str:
    """Where the child running part `name` records its state."""
    return os.path.join(work, "parts", f"{name}.json")


class Context:
    """A child's part: its settings, work directory, deadline and progress file."""

    def __init__(self, name: str, settings, work: str, deadline: float):
        self.name, self.settings, self.work, self.deadline = name, settings, work, deadline
        self.state = {"status": "running", "stage": "started", "values": {}}
        self.path = state_path(work, name)

    def time_left(self) -> float:
        return self.deadline - time.time()

    def report(self, stage: str, **values) -> None:
        """Records a stage reached and its values (written at once: a kill keeps them)."""
        self.state["stage"] = stage
        self.state["values"].update(values)
        self.write()

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, default=plain)
        os.replace(tmp, self.path)


def plain(x):
    """JSON for NumPy scalars."""
    return x.item() if hasattr(x, "item") else str(x)


@dataclasses.dataclass
class _Child:
    """A part running in its own process session."""

    name: str
    process: subprocess.Popen
    start: float
    budget: float
    log_path: str


def _start_child(name: str, command: list[str], work: str, budget: float, popen: dict) -> _Child:
    path = state_path(work, name)
    if os.path.exists(path):
        os.remove(path)
    log_path = os.path.join(work, "parts", f"{name}.log")
    with open(log_path, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    return _Child(name, process, time.time(), budget, log_path)


def _finish_child(child: _Child, work: str, log) -> dict:
    """Collects a finished child's state, or kills its whole session once past its budget."""
    timed_out = child.process.poll() is None
    if timed_out:
        os.killpg(child.process.pid, signal.SIGKILL)
    code, seconds = child.process.wait(), time.time() - child.start
    with open(child.log_path, errors="replace") as f:
        text = f.read()
    log.write(f"===== {child.name}: exit {code}, {seconds:.1f} s =====\n{text[-20000:]}\n")
    log.flush()
    state = {"status": None, "stage": "not started", "values": {}}
    try:
        with open(state_path(work, child.name)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        pass
    state.update(seconds=seconds, budget_s=child.budget, exit_code=code)
    if timed_out:
        state["status"] = "timed out"
        state["reason"] = (
            f"timed out after {child.budget:.0f} s (its budget) at stage {state['stage']!r}"
        )
    elif state["status"] not in ("ok", "skipped", "failed"):
        lines = [line for line in text.splitlines() if line.strip()]
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        why += " (out of memory?)" if code == -signal.SIGKILL else ""
        state["status"] = "failed"
        state["reason"] = f"{why} at stage {state['stage']!r}" + (
            f": {lines[-1][:300]}" if lines else ""
        )
    return state


def run_parts(
    names: list[str],
    command: Callable[[str, float], list[str]],
    dependencies: Callable[[str], tuple[str, ...]],
    budgets: dict[str, float],
    *,
    work: str,
    limit_s: float,
    jobs: int,
    log,
    **popen,
) -> dict:
    """Runs the parts, at most `jobs` at a time, each after its dependencies, in order.

    Args:
      names: the parts, in order.
      command: (part, deadline as a Unix time) -> the child's argv; the child writes its state
        through a `Context` on `state_path(work, part)`.
      dependencies: part -> the parts that must have ended (however) before it starts.
      budgets: seconds per part.
      work: the work directory (with a `parts` folder).
      limit_s: the whole run's limit; a part gets at most what is left of it.
      jobs: parts at a time.
      log: a text file that gets each child's output.
      **popen: `subprocess.Popen` arguments for the children (`env`, `cwd`).

    Returns:
      Each part's state (`status`, `stage`, `values`, `reason`, ...), in the order of `names`.
    """
    started, pending, running, states = time.time(), list(names), [], {}
    while pending or running:
        for name in list(pending):
            if len(running) >= jobs:
                break
            if any(d in pending or d in [c.name for c in running] for d in dependencies(name)):
                continue
            pending.remove(name)
            left = started + limit_s - time.time()
            if left < MIN_PART_S:
                states[name] = {"status": "skipped", "reason": f"the run's {limit_s:.0f} s limit"}
                continue
            budget = min(budgets[name], left)
            print(f"device_check: {name} (budget {budget:.0f} s) ...", flush=True)
            try:
                child = _start_child(name, command(name, time.time() + budget), work, budget, popen)
                running.append(child)
            except OSError as e:
                states[name] = {"status": "failed", "reason": f"could not start: {e}"}
        time.sleep(0.1)
        for child in list(running):
            if child.process.poll() is not None or time.time() > child.start + child.budget:
                running.remove(child)
                states[child.name] = _finish_child(child, work, log)
                print(f"device_check: {child.name}: {states[child.name]['status']}", flush=True)
    return {name: states[name] for name in names}
