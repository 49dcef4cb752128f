"""Tokenizer sweep: the 200K and 800K models on bytes and on byte-level BPE with 1K, 2K, 5K tokens.

  python sweep.py --sweep=configs/sweeps/tokenizers.py --mode=local

Same budget as configs/sweeps/scaling.py (256-token context, batch 32, 400 steps on `pydocs`), so a
BPE model sees more bytes per window and per step than the byte model; rates are per original
byte and the parameter counts include the larger embedding and output layers.
"""

from configs.sweeps import cpu_budget


def get_sweep():
    return {
        "name": "tokenizers",
        "config": "configs/default.py",
        "fixed": {
            **cpu_budget.TRAINING,
            "model.context_length": 256,
            "train.batch_size": 32,
        },
        "axes": {
            "size": ["200K", "800K"],
            "tokenizer": ["bytes", "bpe:1000", "bpe:2000", "bpe:5000"],
        },
    }
