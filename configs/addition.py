"""Training config for n-digit addition, the task with a known entropy floor (data/addition.py).

Examples:
  python train_addition.py --config=configs/addition.py:size=test --workdir=/tmp/add  # seconds
  python train_addition.py --config=configs/addition.py:size=200K --workdir=runs/addition-200K
  python train_addition.py --config=configs/addition.py:size=25K,steps=1500 --workdir=DIR

The arg string is `key=value,...` over: size (a key of `PRESETS`), digits (operand length, default
8) and steps (training steps; default per size). Any field can then be overridden by flag
(`--config.optim.peak_lr=3e-3`); the config is locked, so a misspelt field fails.
"""

from typing import NamedTuple

import ml_collections

from configs import default


class Preset(NamedTuple):
    """A model size and its default training length."""

    num_layers: int
    width: int
    num_heads: int
    steps: int


# Names are nominal parameter counts with the 14-symbol vocabulary and pre-LayerNorm blocks
# (measured: 26,126 / 101,390 / 200,846); results record the measured count.
PRESETS = {
    "test": Preset(1, 16, 2, 20),
    "25K": Preset(2, 32, 2, 2_000),
    "100K": Preset(2, 64, 4, 2_000),
    "200K": Preset(4, 64, 4, 3_000),
}

_ARG_DEFAULTS = {"size": "test", "digits": "8", "steps": ""}
_VOCAB_SIZE = 14  # '0'-'9', 's', 'e', '+', '=' (data.addition.VOCAB; checked by the trainer).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the addition training config for `arg` (see the module docstring)."""
    a = default.parse_arg(arg, **_ARG_DEFAULTS)
    if a.size not in PRESETS:
        raise ValueError(f"Unknown size {a.size!r}; choose one of {list(PRESETS)}.")
    preset = PRESETS[a.size]
    num_digits = int(a.digits)
    is_test = a.size == "test"

    c = ml_collections.ConfigDict()
    c.size = a.size
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.num_digits = num_digits
    c.data.vocab_size = _VOCAB_SIZE

    context_length = 3 * num_digits + 5  # s a + b = c e
    c.model = default.model_config(
        preset.num_layers, preset.width, preset.num_heads, context_length, norm="pre"
    )

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16 if is_test else 256
    c.train.steps = int(a.steps) if a.steps else preset.steps
    c.train.log_every = 5 if is_test else 50
    c.train.eval_every = 10 if is_test else 250
    c.train.eval_samples = 256 if is_test else 4_096  # held-out sequences per eval
    c.train.test_samples = 512 if is_test else 32_768  # fresh test sequences at the end
    c.train.eval_batch_size = 256 if is_test else 2_048
    c.train.checkpoint_every = 10 if is_test else 500
    c.train.keep_checkpoints = 2
    c.train.progress = not is_test
    c.train.extend = False  # True: a resume may raise train.steps or change optim settings.

    c.optim = default.optim_config(
        peak_lr=3e-3, warmup_steps=5 if is_test else 200, final_lr_fraction=0.01
    )
    c.wandb = default.wandb_config()
    return c.lock()
