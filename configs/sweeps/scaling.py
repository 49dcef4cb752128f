"""Scaling sweep: the 4-layer family from 20K to 3.2M parameters on two training-set sizes.

  python sweep.py --sweep=configs/sweeps/scaling.py --mode=local
  python -m analysis.scaling --csv=runs/scaling/results.csv --out_dir=docs

Sized for a 2-core CPU (about 50 minutes): 256-byte context, batch 32, 400 steps (3.3M tokens) on
the embedded `pydocs` corpus, all of its train split (about 450 KB) or its first 64 KiB. On an
accelerator raise `train.steps`, the context (2048 is the paper's) and `dataset` (enwik8).
"""

from configs.sweeps import cpu_budget


def get_sweep():
    return {
        "name": "scaling",
        "config": "configs/default.py",
        "fixed": {
            **cpu_budget.TRAINING,
            "tokenizer": "bytes",
            "model.context_length": 256,
            "train.batch_size": 32,
        },
        "axes": {
            "data.train_bytes": [0, 65536],  # 0: the whole train split
            "size": ["20K", "65K", "200K", "800K", "3.2M"],
        },
    }
