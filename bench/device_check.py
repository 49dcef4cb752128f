r"""The accelerator check: correctness and speed of the whole pipeline in one command.

  python bench/device_check.py --out=DIR           # one GPU: at most 8.5 minutes, compiles included
  python bench/device_check.py --out=DIR --small   # any CPU: tiny presets, about a minute

Writes `DIR/device_check.json` (the figures, keys below), `DIR/device_check.md` (a table of each
figure beside its goal and roofline) and `DIR/device_check.log` (each part's output). It needs
only the repository: the embedded `pydocs` corpus, random weights, and a model it trains itself
for a few hundred steps.

Parts, in this order, each in a child process of this script (`--part=NAME`) with a time budget,
so that a hung compile or an out-of-memory kill costs that part only; a part records what it
reached as it goes, and one that fails, times out or is skipped leaves its figures null and its
reason under `notes`:

* `model`: trains the round-trip model (3.2M, bf16, pydocs) a few hundred steps; writes a run.
* `compress_portable`, `compress_float`: `lm_stream.compress_file` twice with the default
  (integer) path and the float path: speed, and the two streams must be equal (`deterministic`).
* `decompress_portable`, `decompress_float`: in another process, `lm_stream.decompress_file`
  twice, compared with the input byte for byte and by sha256 (`roundtrip_exact`), speed, and a
  re-encode in that process must give the same stream.
* `online`: `compress.py --model=online:200K` (the default recipe) on the first 128 KB of pydocs,
  then its decompression: KB/s each way, bits per byte, exact.
* `attention`: cuDNN flash attention against XLA's, bf16, 3.2M: the largest log-prob difference
  of one forward (GPU only).
* `train_SIZE`: the bf16 train step at batch 128 x 2048: tokens/s, and the loss is finite.
* `eval`: `LanguageModelCompressor.log_loss` and `.code` on 2048-byte chunks: MB/s.
* `coder`: the range coder alone at 8,192 lanes (`bench/coder_throughput.py`): symbols/s.

The compression parts use a run they find (the `model` part's) or write one with random weights.
Lanes: `lm_coder.default_lanes` (from the device's memory), at most the chunks there are. The
model paths run in the run's compute dtype ('auto': bf16 on a GPU, float32 on a CPU). Rooflines:
training and log-loss from peak bf16 FLOP/s; compression, the coded path and the coder from
memory bandwidth (a decode step reads the whole filled KV prefix of every lane), read from NVML
(bus width x memory clock) where it answers, else from a table of device kinds; the JSON says
which. `--small` runs the same parts with the `test` preset, short contexts and few steps, two
parts at a time (`--jobs`; one at a time otherwise, so that timings do not overlap); the
portable and training parts share compiled programs through a persistent cache, the float
path's parts each compile their own (tests/device_check_test.py).

`--fail_part=NAME` (or `NAME:hang`) makes a part fail (or hang until its budget runs out), to
test the isolation; `--parts=A,B` runs some parts only (and the parts they need);
`--budgets=NAME=SECONDS,...` overrides budgets; `--time_limit_s` bounds the whole run.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import device_parts, device_report, part_runner  # noqa: E402
from bench.device_report import PATHS  # noqa: E402

# The parent imports no JAX: only the children touch the device, one at a time.


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run measures (FULL on a GPU, SMALL on a CPU with --small).

    Attributes:
      size: the preset of the attention, round-trip, compression and eval parts.
      train_sizes: presets timed by the train parts.
      train_batch: global batch of the timed train steps.
      seq_len: their sequence length (and the attention part's).
      model_steps: training steps of the round-trip model, at most.
      model_batch: its batch.
      input_bytes: pydocs bytes compressed (0: all), after one chunk of random bytes.
      attention_batch: rows of the attention comparison.
      max_rows: log-loss rows per device, at most.
      coder_lanes, coder_length: the range coder's batch.
      online_model, online_recipe, online_bytes: the online part's model, its --recipe, and
        the pydocs bytes it codes.
      timed_s: what each timed loop aims at, in seconds.
      budgets: seconds per part (`train` for each train part).
      time_limit_s: the whole run's limit.
    """

    size: str
    train_sizes: tuple[str, ...]
    train_batch: int
    seq_len: int
    model_steps: int
    model_batch: int
    input_bytes: int
    attention_batch: int
    max_rows: int
    coder_lanes: int
    coder_length: int
    online_model: str
    online_recipe: str
    online_bytes: int
    timed_s: float
    budgets: dict
    time_limit_s: float


_BUDGETS = {  # seconds per part on a GPU; every part gets 60 s with --small
    "model": 40,
    "compress_portable": 70,
    "decompress_portable": 40,
    "compress_float": 50,
    "decompress_float": 50,
    "online": 60,
    "attention": 25,
    "train": 30,
    "eval": 55,
    "coder": 30,
}
_SMALL_RECIPE = "segment_bytes=64,lanes=2,steps=1,replay=2,order=2,table_bits=10"
# Each setting's value in FULL (one GPU) beside its value in SMALL (--small, any CPU).
_BOTH = dict(
    size=("3.2M", "test"),
    train_sizes=(("200K", "800K", "3.2M"), ("test",)),
    train_batch=(128, 16),
    seq_len=(2048, 64),
    model_steps=(300, 100),
    model_batch=(32, 16),
    input_bytes=(0, 8192),
    attention_batch=(8, 2),
    max_rows=(512, 16),
    coder_lanes=(8192, 256),
    coder_length=(2048, 128),
    online_model=("online:200K", "online:test"),
    online_recipe=("", _SMALL_RECIPE),
    online_bytes=(1 << 17, 1024),
    timed_s=(4.0, 0.3),
    budgets=(_BUDGETS, dict.fromkeys(_BUDGETS, 60)),
    time_limit_s=(510, 300),
)
FULL = Settings(**{name: full for name, (full, _) in _BOTH.items()})
SMALL = Settings(**{name: small for name, (_, small) in _BOTH.items()})


def part_names(settings: Settings) -> list[str]:
    """The parts of a run, in order: correctness first."""
    names = ["model"]
    for path in PATHS:
        names += [f"compress_{path}", f"decompress_{path}"]
    names += ["online", "attention"]
    names += [f"train_{size}" for size in reversed(settings.train_sizes)]
    return names + ["eval", "coder"]


# ---------------------------------------------------------------------------------------------
# The parent runs the parts in children, then writes the report; a child runs one part.


def run_part(args) -> int:
    """A child's main: runs one part, recording its state in WORK/parts/NAME.json."""
    settings = SMALL if args.small else FULL
    ctx = part_runner.Context(args.part, settings, args.workdir, args.deadline)
    ctx.write()
    status = 0
    try:
        if args.fail == "raise":
            raise RuntimeError("forced failure (--fail_part)")
        if args.fail == "hang":
            time.sleep(10 * 24 * 3600)
        values = device_parts.run(ctx)
        ctx.state["values"].update(values)
        ctx.state.update(status="ok", stage="done")
    except part_runner.Skip as e:
        ctx.state.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - recorded for the parent, which goes on
        traceback.print_exc()
        ctx.state.update(status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0])
        status = 1
    ctx.write()
    return status


def _dependencies(name: str) -> tuple[str, ...]:
    """Parts that must have ended (however) before `name` starts."""
    if name.startswith("decompress_"):
        return ("compress_" + name.removeprefix("decompress_"),)
    return () if name in ("model", "online", "coder") else ("model",)


def run_all(args) -> int:
    """The parent's main: every part in turn, then the JSON and Markdown reports."""
    started = time.time()
    settings = _settings(args)
    os.makedirs(args.out, exist_ok=True)
    work = args.workdir or tempfile.mkdtemp(prefix="device_check_")
    os.makedirs(os.path.join(work, "parts"), exist_ok=True)
    names = part_names(settings)
    if args.parts:  # and what they need: a fresh machine has no run or stream yet
        wanted = set(args.parts.split(","))
        while extra := {d for n in wanted for d in _dependencies(n)} - wanted:
            wanted |= extra
        names = [n for n in names if n in wanted]
    budgets = {n: settings.budgets.get(n, settings.budgets["train"]) for n in names}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.jobs > 1:  # each child would take 75% of a GPU's memory
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.75 / args.jobs:.2f}")
    with open(os.path.join(args.out, "device_check.log"), "w") as log:
        states = part_runner.run_parts(
            names,
            lambda name, deadline: _child_command(name, deadline, args, work),
            _dependencies,
            budgets,
            work=work,
            limit_s=args.time_limit_s or settings.time_limit_s,
            jobs=args.jobs,
            log=log,
            env=env,
            cwd=REPO,
        )
    report = device_report.build(states, settings, args.small, started)
    print(device_report.write(report, args.out))
    if not args.workdir and not args.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _settings(args) -> Settings:
    """The mode's settings, with the budgets that --budgets overrides."""
    settings = SMALL if args.small else FULL
    budgets = dict(settings.budgets)
    for item in filter(None, args.budgets.split(",")):
        key, _, seconds = item.partition("=")
        budgets[key] = float(seconds)
    return dataclasses.replace(settings, budgets=budgets)


def _child_command(name: str, deadline: float, args, work: str) -> list[str]:
    """The argv of the child that runs part `name` (this script with --part)."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--part={name}", f"--workdir={work}"]
    cmd += [f"--deadline={deadline}"] + (["--small"] if args.small else [])
    fail = dict(f.partition(":")[::2] for f in args.fail_part)
    if name in fail:
        cmd.append(f"--fail={fail[name] or 'raise'}")
    return cmd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="directory for device_check.json / .md / .log")
    parser.add_argument("--small", action="store_true", help="tiny presets, for a CPU")
    parser.add_argument("--parts", default="", help="comma-separated parts (default: all)")
    parser.add_argument("--budgets", default="", help="NAME=SECONDS,... ('train' for all)")
    parser.add_argument("--time_limit_s", type=float, default=0, help="0: the mode's default")
    parser.add_argument("--fail_part", action="append", default=[], help="NAME or NAME:hang")
    parser.add_argument("--jobs", type=int, default=0, help="parts at a time (0: 1, 2 --small)")
    parser.add_argument("--workdir", default="", help="work files (default: a temporary dir)")
    parser.add_argument("--keep_workdir", action="store_true")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a child's part
    parser.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fail", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return run_part(args)
    if not args.out:
        parser.error("--out is required")
    args.jobs = args.jobs or (2 if args.small else 1)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
