"""Training config for byte-level Transformers.

Examples:
  python train.py --config=configs/default.py:size=test --workdir=/tmp/run   # CPU, seconds
  python train.py --config=configs/default.py:size=3.2M,dataset=enwik8 \
      --config.train.steps=100000 --workdir=runs/3.2M
  python train.py --config=configs/default.py:size=200K --config.data.path=my.txt --workdir=DIR

The arg string is `key=value,...` over: size (a key of `configs.sizes.PRESETS`), dataset (a name of
`data.corpus.CORPORA`, default the embedded `pydocs`), tokenizer (`bytes`). Any field can then be
overridden by flag (`--config.optim.peak_lr=3e-4`); the config is locked, so a misspelt field fails.
"""

import ml_collections

from configs import sizes

_ARG_DEFAULTS = {"size": "test", "dataset": "pydocs", "tokenizer": "bytes"}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `key=value,...` against declared defaults; unknown keys raise ValueError."""
    parsed = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"Bad config arg {item!r}: expected key=value with key in {sorted(defaults)}."
            )
        parsed[key] = value
    return ml_collections.ConfigDict(parsed)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the training config for `arg` (see the module docstring)."""
    a = parse_arg(arg, **_ARG_DEFAULTS)
    if a.size not in sizes.PRESETS:
        raise ValueError(f"Unknown size {a.size!r}; choose one of {list(sizes.PRESETS)}.")
    num_layers, width, num_heads, context = sizes.PRESETS[a.size]
    is_test = a.size == "test"

    c = ml_collections.ConfigDict()
    c.size = a.size
    c.seed = 0
    c.tokenizer = a.tokenizer

    c.model = ml_collections.ConfigDict()
    c.model.num_layers = num_layers
    c.model.width = width
    c.model.num_heads = num_heads
    c.model.mlp_ratio = 4
    c.model.context_length = context
    c.model.norm = "post"  # 'post' is the paper's layout; 'pre' adds a final LayerNorm.
    c.model.rope_base = 10_000.0
    c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (params stay float32).
    c.model.attention = "auto"  # 'auto' (cuDNN flash on GPU when possible), 'xla' or 'cudnn'.
    c.model.emb_init_scale = 0.02

    c.data = ml_collections.ConfigDict()
    c.data.name = a.dataset
    c.data.path = ""  # a local file overrides `name` (trains on any file).
    c.data.cache_dir = ""  # '' -> $LMC_DATA_DIR or ~/.cache/lmcompress.
    c.data.valid_fraction = 0.05
    c.data.test_fraction = 0.05
    c.data.train_bytes = 0  # train on the first N bytes of the train split (0: all of it).

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16 if is_test else 128
    c.train.steps = 300 if is_test else 100_000
    c.train.log_every = 25 if is_test else 100
    c.train.eval_every = 100 if is_test else 2_000
    c.train.eval_max_bytes = 32_768 if is_test else 1_048_576
    c.train.checkpoint_every = 100 if is_test else 2_000
    c.train.keep_checkpoints = 2
    c.train.progress = True

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # 'adamw' (warmup + cosine) or 'adam_constant' (the reference's).
    c.optim.peak_lr = 1e-2 if is_test else 1e-3
    c.optim.warmup_steps = 20 if is_test else 1_000
    c.optim.final_lr_fraction = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.weight_decay = 0.1
    c.optim.grad_clip_norm = 1.0

    c.distributed = False  # call jax.distributed.initialize() (multi-host).

    c.wandb = ml_collections.ConfigDict()
    c.wandb.mode = "disabled"  # 'online', 'offline' or 'disabled'.
    c.wandb.project = "lm-compression"
    c.wandb.name = ""
    return c.lock()
