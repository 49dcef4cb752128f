"""Training settings the CPU-sized sweeps share: 400 steps on the embedded `pydocs` corpus."""

TRAINING = {
    "dataset": "pydocs",
    "train.steps": 400,
    "train.log_every": 50,
    "train.eval_every": 200,
    "train.checkpoint_every": 200,
    "train.eval_max_bytes": 65536,
    "train.progress": False,
    "optim.peak_lr": 2e-3,
    "optim.warmup_steps": 40,
}
