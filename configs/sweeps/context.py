"""Context sweep: the 200K model trained with the paper's 2048-byte context, for the context study.

  python sweep.py --sweep=configs/sweeps/context.py --mode=local
  python -m analysis.context --runs=runs/context/size=200K --out_dir=docs

Sized for a 2-core CPU: batch 4 x 2048 bytes, 400 steps on `pydocs`. The context study then codes
held-out chunks of 64 to 2048 bytes with this model, gzip and LZMA2.
"""


def get_sweep():
    return {
        "name": "context",
        "config": "configs/default.py",
        "fixed": {
            "dataset": "pydocs",
            "tokenizer": "bytes",
            "model.context_length": 2048,
            "train.batch_size": 4,
            "train.steps": 400,
            "train.log_every": 50,
            "train.eval_every": 200,
            "train.checkpoint_every": 200,
            "train.eval_max_bytes": 65536,
            "train.progress": False,
            "optim.peak_lr": 2e-3,
            "optim.warmup_steps": 40,
        },
        "axes": {"size": ["200K"]},
    }
