"""CPU demo: the paper's 200K model, 256-byte context, on the embedded `pydocs` corpus.

  python train.py --config=configs/demo.py --workdir=runs/demo-pydocs-200K

About 5 minutes on 2 CPU cores; ends by printing held-out bits per byte next to gzip and LZMA2.
Measured here (2-core CPU, jax 0.11.2): 1.85 bits per byte on the test split against gzip -9's
4.29 on the same 256-byte windows (its container counted once, as the paper does) and 2.08 on
the whole split.
"""

from configs import default


def get_config(arg: str | None = None):
    """The default config for `size=200K` (arg as in configs/default.py) shrunk for a CPU."""
    c = default.get_config(arg or "size=200K")
    c.model.context_length = 256
    c.train.batch_size = 32
    c.train.steps = 600
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.eval_max_bytes = 32_768
    c.optim.peak_lr = 2e-3
    c.optim.warmup_steps = 50
    return c
