"""Range checks for every numeric config field, run before anything compiles.

`check(config)` walks the config and raises one ValueError naming the first field outside its
allowed range, e.g. `train.batch_size=0: must be an integer >= 1`. Fields not listed here (names,
paths, flags) are checked where they are used.
"""

import math
from collections.abc import Callable

import ml_collections

_INF = math.inf


def _int(low: float, high: float = _INF) -> tuple[Callable[[object], bool], str]:
    rule = f"an integer >= {low}" if high == _INF else f"an integer in [{low}, {high}]"
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high), rule


def _real(low: float, high: float = _INF, open_low=False, open_high=False):
    left, right = "(" if open_low else "[", ")" if open_high else "]"
    rule = f"a number in {left}{low}, {high}{right}"

    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    return ok, rule


# field path -> (predicate, rule); a path absent from a config is skipped.
RULES = {
    "seed": _int(0),
    "model.num_layers": _int(1),
    "model.width": _int(2),
    "model.num_heads": _int(1),
    "model.mlp_ratio": _int(1),
    "model.context_length": _int(2),
    "model.rope_base": _real(0, open_low=True),
    "model.emb_init_scale": _real(0, open_low=True),
    "data.valid_fraction": _real(0, 1, open_low=True, open_high=True),
    "data.test_fraction": _real(0, 1, open_low=True, open_high=True),
    "data.train_bytes": _int(0),
    "data.num_digits": _int(1, 18),
    "train.batch_size": _int(1),
    "train.steps": _int(1),
    "train.log_every": _int(1),
    "train.eval_every": _int(1),
    "train.checkpoint_every": _int(1),
    "train.keep_checkpoints": _int(1),
    "train.eval_max_bytes": _int(1),
    "train.eval_samples": _int(1),
    "train.test_samples": _int(1),
    "train.eval_batch_size": _int(1),
    "optim.peak_lr": _real(0, open_low=True),
    "optim.warmup_steps": _int(0),
    "optim.final_lr_fraction": _real(0, 1),
    "optim.b1": _real(0, 1, open_high=True),
    "optim.b2": _real(0, 1, open_high=True),
    "optim.weight_decay": _real(0),
    "optim.grad_clip_norm": _real(0, open_low=True),
    # configs/eval.py
    "num_chunks": _int(0),
    "chunk_size": _int(1),
    "workers": _int(0),
    "block_chunks": _int(1),
    "lm.step": _int(-1),
    "lm.chunks_per_device": _int(1),
    "lm.lanes": _int(1, 1 << 16),
    "lm.attention_blocks": _int(0, 16),
    "lm.prefetch": _int(1),
}


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first numeric field outside its range, and shapes that
    cannot be built (heads that do not divide the width into even head sizes)."""
    flat = _flatten(config.to_dict())
    for path, (ok, rule) in RULES.items():
        if path in flat and not ok(flat[path]):
            raise ValueError(f"{path}={flat[path]!r}: must be {rule}.")
    width, heads = flat.get("model.width"), flat.get("model.num_heads")
    if width and heads and (width % heads or (width // heads) % 2):
        raise ValueError(
            f"model.width={width} must split into model.num_heads={heads} heads of even size."
        )


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
