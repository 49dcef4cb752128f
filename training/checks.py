"""Range checks for every numeric config field, run before anything compiles.

`check(config)` walks the config and raises one ValueError naming the first field outside its
allowed range, e.g. `train.batch_size=0: must be an integer >= 1`; real numbers must be finite.
Fields not listed here (names, paths, flags) are checked where they are used.
`check_memory(config, ...)` refuses a training config that cannot fit in the machine's memory.
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
    if high == _INF:  # finite: inf itself is refused
        rule = f"a number in {left}{low}, inf)"

    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
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
    "lm.lanes": _int(0, 1 << 16),  # 0: from the device's memory
    "lm.attention_blocks": _int(0, 16),
    "lm.prefetch": _int(1),
}


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first numeric field outside its range, and shapes that
    cannot be built (heads that do not divide the width into even head sizes)."""
    flat = flatten_paths(config.to_dict())
    for path, (ok, rule) in RULES.items():
        if path in flat and not ok(flat[path]):
            raise ValueError(f"{path}={flat[path]!r}: must be {rule}.")
    width, heads = flat.get("model.width"), flat.get("model.num_heads")
    if width and heads and (width % heads or (width // heads) % 2):
        raise ValueError(
            f"model.width={width} must split into model.num_heads={heads} heads of even size."
        )


def flatten_paths(tree: dict, prefix: str = "") -> dict:
    """{'train': {'steps': 1}} -> {'train.steps': 1}: a config's fields by their flag paths."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_paths(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# The integer fields the memory grows with, and the least value each may take.
_MEMORY_FIELDS = {
    "train.batch_size": 1,
    "model.context_length": 2,
    "model.num_layers": 1,
    "model.width": 2,
}
_FLOAT32_BYTES = 4
_INT32_BYTES = 4
_ADAMW_BYTES_PER_PARAM = 4 * _FLOAT32_BYTES  # parameters, gradients and Adam's two moments


def training_memory_bytes(config: ml_collections.ConfigDict, num_devices: int = 1) -> dict:
    """A floor on the memory training `config` takes, in bytes, by what takes it.

    Only what cannot be avoided is counted, so that a config refused on it can never fit
    (real use is several times higher):

    * `params`: the parameters, their gradients and Adam's two moments in float32 (16 bytes a
      parameter), on each device (they are replicated);
    * `activations`: for one device's share of the batch, the residual stream at every layer,
      which the backward pass needs (width values a token and layer, in the compute dtype: 2
      bytes for bfloat16 or 'auto', else 4); the rest XLA may recompute;
    * `log_probs`: the log-probabilities, vocab float32 values a token;
    * `host`: on the host, the training batch and, for held-out evaluation, two sets of at
      least one batch each, as int32.

    Args:
      config: a training config (configs/default.py or configs/addition.py).
      num_devices: the devices the batch is split over.

    Returns:
      {'params', 'activations', 'log_probs', 'host'}: bytes; the first three per device.
    """
    from models import transformer  # JAX; the range checks above need none

    flat = flatten_paths(config.to_dict())
    model = transformer.TransformerConfig.from_config(config.model, _vocab_size(flat))
    tokens = -(-flat["train.batch_size"] // num_devices) * flat["model.context_length"]
    dtype_bytes = 4 if flat.get("model.dtype") == "float32" else 2
    batches = 3 if "train.eval_max_bytes" in flat else 1
    return {
        "params": transformer.closed_form_num_params(model) * _ADAMW_BYTES_PER_PARAM,
        "activations": tokens * model.num_layers * model.width * dtype_bytes,
        "log_probs": tokens * model.vocab_size * _FLOAT32_BYTES,
        "host": batches * flat["train.batch_size"] * flat["model.context_length"] * _INT32_BYTES,
    }


def check_memory(
    config: ml_collections.ConfigDict,
    device_bytes: int | None,
    host_bytes: int,
    num_devices: int = 1,
) -> None:
    """Refuses a training config whose memory floor (`training_memory_bytes`) exceeds the
    machine's.

    Args:
      config: a training config.
      device_bytes: the memory of one accelerator; None where the devices use the host's RAM (a
        CPU).
      host_bytes: the host's RAM.
      num_devices: the devices the batch is split over.

    Raises:
      ValueError: one line naming a field that alone could make the config fit (the one
        furthest above its least value), the estimate against the memory, and what fits.
    """
    need, have, where = _memory_need(config, device_bytes, host_bytes, num_devices)
    if need <= have:
        return
    flat = flatten_paths(config.to_dict())
    fits = {
        f: _largest_fitting(config, f, device_bytes, host_bytes, num_devices)
        for f in _MEMORY_FIELDS
    }
    fits = {f: v for f, v in fits.items() if v >= _MEMORY_FIELDS[f]}
    parts = training_memory_bytes(config, num_devices)
    field = "model.num_layers" if parts["params"] > parts["activations"] else "train.batch_size"
    if fits:  # of the fields that alone could make it fit, the one furthest above its least
        field = max(fits, key=lambda f: flat[f] / _MEMORY_FIELDS[f])
    hint = f"; {field} up to about {fits[field]:,} fits" if field in fits else ""
    raise ValueError(
        f"{field}={flat[field]}: training this config needs at least {_size(need)} of {where} "
        f"(parameters with Adam's state {_size(parts['params'])}, activations "
        f"{_size(parts['activations'])}, log-probabilities {_size(parts['log_probs'])}), more "
        f"than the {_size(have)} here{hint}."
    )


def _memory_need(config, device_bytes, host_bytes, num_devices) -> tuple[int, int, str]:
    """(bytes needed, bytes there, what memory) of the tighter of device and host memory."""
    parts = training_memory_bytes(config, num_devices)
    on_device = parts["params"] + parts["activations"] + parts["log_probs"]
    if device_bytes is None:  # the devices are the host's CPU cores
        return on_device * num_devices + parts["host"], host_bytes, "RAM"
    if parts["host"] > host_bytes:
        return parts["host"], host_bytes, "RAM"
    return on_device, device_bytes, "memory on each device"


def _largest_fitting(config, field: str, device_bytes, host_bytes, num_devices) -> int:
    """The largest value of `field` (an integer) that fits, the rest unchanged; 0 if none."""

    def fits(value: int) -> bool:
        trial = ml_collections.ConfigDict(config.to_dict())
        section, name = field.split(".")
        trial[section][name] = value
        need, have, _ = _memory_need(trial, device_bytes, host_bytes, num_devices)
        return need <= have

    low, high = 0, flatten_paths(config.to_dict())[field]  # fits(low) or low == 0; not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _vocab_size(flat: dict) -> int:
    """The vocabulary a config's tokenizer will have: 'bpe:N' has N, bytes 256."""
    if "data.vocab_size" in flat:  # configs/addition.py
        return flat["data.vocab_size"]
    size = str(flat.get("tokenizer", "bytes")).partition("bpe:")[2]
    return int(size) if size.isdigit() else 256


def _size(num_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:,.1f} {unit}"
    return f"{num_bytes / 1e3:,.1f} kB"
