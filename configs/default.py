"""Training config for byte-level Transformers.

Examples:
  python train.py --config=configs/default.py:size=test --workdir=/tmp/run   # CPU, seconds
  python train.py --config=configs/default.py:size=3.2M,dataset=enwik8 \
      --config.train.steps=100000 --workdir=runs/3.2M
  python train.py --config=configs/default.py:size=200K --config.data.path=my.txt --workdir=DIR

The arg string is `key=value,...` over: size (a key of `configs.sizes.PRESETS`), dataset (`pydocs`,
the embedded default, `enwik8`, `enwik9` or `file:PATH`; see `data.corpus.load_corpus`) and
tokenizer (`bytes` or `bpe:N`). Any field can then be
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
    preset = sizes.PRESETS[a.size]
    is_test = a.size == "test"

    c = ml_collections.ConfigDict()
    c.size = a.size
    c.seed = 0
    c.tokenizer = a.tokenizer

    c.model = model_config(*preset, norm="post")

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
    c.train.extend = False  # True: a resume may raise train.steps or change optim settings.

    c.optim = optim_config(peak_lr=1e-2 if is_test else 1e-3, warmup_steps=20 if is_test else 1_000)
    c.distributed = False  # call jax.distributed.initialize() (multi-host).
    c.wandb = wandb_config()
    return c.lock()


def model_config(
    num_layers: int, width: int, num_heads: int, context_length: int, norm: str
) -> ml_collections.ConfigDict:
    """The `model` section: a Transformer of the given shape (models.transformer)."""
    m = ml_collections.ConfigDict()
    m.num_layers = num_layers
    m.width = width
    m.num_heads = num_heads
    m.mlp_ratio = 4
    m.context_length = context_length
    m.norm = norm  # 'post' is the paper's layout; 'pre' adds a final LayerNorm.
    m.positions = "rotary"  # or 'sinusoidal': the paper's sinusoids added to the embedding.
    m.rope_base = 10_000.0  # rotary positions only.
    m.dtype = "auto"  # compute: 'auto' (bf16 on GPU/TPU, f32 on CPU), 'float32' or 'bfloat16'.
    m.attention = "auto"  # 'auto' (cuDNN flash on a GPU where it applies), 'xla' or 'cudnn'.
    m.emb_init_scale = 0.02
    return m


def optim_config(
    peak_lr: float, warmup_steps: int, final_lr_fraction: float = 0.1
) -> ml_collections.ConfigDict:
    """The `optim` section (training.steps.make_optimizer)."""
    o = ml_collections.ConfigDict()
    o.name = "adamw"  # 'adamw' (warmup + cosine) or 'adam_constant' (the reference's).
    o.peak_lr = peak_lr
    o.warmup_steps = warmup_steps
    o.final_lr_fraction = final_lr_fraction
    o.b1 = 0.9
    o.b2 = 0.98
    o.weight_decay = 0.1
    o.grad_clip_norm = 1.0
    return o


def wandb_config() -> ml_collections.ConfigDict:
    """The `wandb` section: metrics mirrored to Weights & Biases when not disabled."""
    w = ml_collections.ConfigDict()
    w.mode = "disabled"  # 'online', 'offline' or 'disabled'.
    w.project = "lm-compression"
    w.name = ""
    return w
