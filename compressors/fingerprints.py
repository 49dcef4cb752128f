"""Fingerprints of models: sha256 of everything that decides a model's probabilities.

compress.py writes a model's fingerprint into every stream (its `model` field) and refuses to
decode with another model; eval_compress.py keeps it in every model's record and reuses a record
only while the model's fingerprint is the same. Both compute it here, so a stream written before
and a record kept now name a model the same way.

* A training run (`run_fingerprint`): the run's `config.model` (JSON, sorted keys), its tokenizer
  name, the sha256 of its trained tokenizer file (of no bytes for the byte tokenizer), the
  checkpoint step, then every parameter's path, dtype, shape and bytes
  (`models.lm_coder.params_sha256`).
* A pretrained checkpoint on disk (`hf_fingerprint`): config.json, the hex sha256 of the tokenizer
  file, then the safetensors files as stored, in sorted path order.
"""

import hashlib
import json
import os
import pathlib
from typing import Any

import runs
from models import lm_coder


def run_fingerprint(
    workdir: str | os.PathLike, step: int | None = None, params: Any = None
) -> tuple[int, str]:
    """Returns (step, sha256 hex) of a training run's checkpoint.

    Args:
      workdir: a train.py run directory.
      step: the checkpoint's step; None: the newest.
      params: the parameters of the checkpoint at `step`, when already loaded (saves restoring
        them again).

    Raises:
      FileNotFoundError: not a run, no checkpoint, or none at `step`.
      ValueError: `params` given without their `step`.
    """
    if params is None:
        from training import checkpoints  # imports orbax

        _, params, step = checkpoints.restore_params(workdir, step)
    elif step is None:
        raise ValueError("run_fingerprint: give the step of the parameters passed.")
    config = runs.load_config(workdir)
    tokenizer = runs.load_tokenizer(workdir, config)
    tokenizer_path = pathlib.Path(workdir) / runs.TOKENIZER_FILE
    tokenizer_file = tokenizer_path.read_bytes() if tokenizer.name != "bytes" else b""
    description = (
        json.dumps(config.model.to_dict(), sort_keys=True).encode()
        + config.tokenizer.encode()
        + hashlib.sha256(tokenizer_file).digest()
        + str(step).encode()
    )
    return step, lm_coder.params_sha256(description, params).hex()


def hf_fingerprint(model_dir: str | os.PathLike) -> str:
    """Returns the sha256 hex of a Hugging Face model directory's checkpoint, hashed as stored
    (no copy of the parameters is made; large checkpoints take a while to read).

    Raises:
      FileNotFoundError: config.json, the tokenizer or a safetensors file is missing.
    """
    from data import pretrained_tokenizers
    from models import pretrained

    tokenizer = pretrained_tokenizers.tokenizer_file(model_dir)
    digest = hashlib.sha256(pathlib.Path(model_dir, "config.json").read_bytes())
    digest.update(hashlib.sha256(tokenizer.read_bytes()).hexdigest().encode())
    for file in sorted(set(pretrained.safetensors_files(model_dir).values())):
        with open(file, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()
