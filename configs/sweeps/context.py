"""Context sweep: the 200K model trained with the paper's 2048-byte context, for the context study.

  python sweep.py --sweep=configs/sweeps/context.py --mode=local
  python -m analysis.context --runs=runs/context/size=200K --out_dir=docs

Sized for a 2-core CPU: batch 4 x 2048 bytes, 400 steps on `pydocs`. The context study then codes
held-out chunks of 64 to 2048 bytes with this model, gzip and LZMA2.
"""

from configs.sweeps import cpu_budget


def get_sweep():
    return {
        "name": "context",
        "config": "configs/default.py",
        "fixed": {
            **cpu_budget.TRAINING,
            "tokenizer": "bytes",
            "model.context_length": 2048,
            "train.batch_size": 4,
        },
        "axes": {"size": ["200K"]},
    }
