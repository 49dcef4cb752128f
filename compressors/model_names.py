"""Model names, resolved into `models.coding_model.CodingModel`s: the one place that reads them.

  RUN_DIR      a training run's workdir (train.py): its newest checkpoint, or `step`'s
  lm:RUN_DIR   the same, as a compressor list names it (`--config.compressors=gzip,lm:RUN_DIR`)
  hf:PATH      a Hugging Face model directory: config.json, *.safetensors, and tokenizer.json or
               tokenizer.model (models/pretrained.py lists the architectures)
  online:SIZE  a model that learns while it codes, from a seeded start (compressors/online.py);
               its stream holds the whole recipe, so it decompresses without naming a model
  online:RUN_DIR  the same, starting from a byte-level training run's parameters; its stream
               fingerprints the run, which decompress then needs (--model=RUN_DIR)

compress.py, sample.py and the evaluator take these names and nothing else asks which kind of
model a name is: what differs between kinds is in the `CodingModel` this module builds.
"""

import dataclasses
import os

import numpy as np

from models import coding_model

HF_PREFIX = "hf:"
LM_PREFIX = "lm:"
ONLINE_PREFIX = "online:"
KINDS = {
    "run": "a training run (RUN_DIR)",
    "hf": "a Hugging Face model directory (hf:PATH)",
    "online": "an online model (online:SIZE)",
}


def parse(name: str) -> tuple[str, str]:
    """(kind, path) of a model name: ('hf', PATH) for `hf:PATH`, ('online', SIZE) for
    `online:SIZE`, ('run', RUN_DIR) for `lm:RUN_DIR` or a bare RUN_DIR.

    Raises:
      ValueError: a prefix without its path.
    """
    name = os.fspath(name)
    prefixes = ((HF_PREFIX, "hf"), (LM_PREFIX, "run"), (ONLINE_PREFIX, "online"))
    for prefix, kind in prefixes:
        if name.startswith(prefix):
            if not name[len(prefix) :]:
                what = {
                    "hf": "a model directory: hf:PATH",
                    "run": "a training run: lm:RUN_DIR",
                    "online": "a size: online:SIZE (e.g. online:200K)",
                }[kind]
                raise ValueError(f"{prefix[:-1]} needs {what}.")
            return kind, name[len(prefix) :]
    if not name:
        raise ValueError("no model given: RUN_DIR (a training run) or hf:PATH.")
    return "run", name


def is_model(name: str) -> bool:
    """Whether a compressor list's entry names a model (`lm:RUN_DIR`, `hf:PATH`,
    `online:SIZE`)."""
    return name.startswith((LM_PREFIX, HF_PREFIX, ONLINE_PREFIX))


def check(name: str) -> None:
    """Cheap checks that `name` can load, before any long work (reads no weights).

    Raises:
      FileNotFoundError: no such run or model directory, or a file it needs is missing.
      ValueError: an unsupported architecture.
    """
    kind, path = parse(name)
    if kind == "hf":
        from compressors import pretrained_model

        pretrained_model.check_model_dir(path)
    elif kind == "online" and path in _preset_names():
        from compressors import online

        online.Recipe.parse(path)
    else:
        import runs

        runs.load_config(path)


def load(
    name: str, *, step: int | None = None, dtype: str = "", recipe: str = ""
) -> coding_model.CodingModel:
    """Loads a model by name (see the module docstring).

    Args:
      name: RUN_DIR, lm:RUN_DIR, hf:PATH or online:SIZE.
      step: a training run's checkpoint (None: the newest).
      dtype: the compute dtype ('float32', 'bfloat16'); '' keeps the model's (a run's own,
        float32 for hf: models).
      recipe: an online model's `key=value,...` refinements (`compressors.online.Recipe`).

    Raises:
      FileNotFoundError, ValueError: no such model, or options that do not apply to it.
    """
    kind, path = parse(name)
    if dtype not in ("", "float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}.")
    if recipe and kind != "online":
        raise ValueError("--recipe applies to online:SIZE models.")
    if kind == "online":
        if dtype:
            raise ValueError("--dtype does not apply to online: models (see --recipe).")
        return _load_online(name, path, step, recipe)
    if kind == "hf":
        if step is not None:
            raise ValueError("--step applies to training runs, not to hf: models.")
        return _load_pretrained(name, path, dtype or "float32")
    return _load_run(name, path, step, dtype)


def _load_run(name: str, workdir: str, step: int | None, dtype: str) -> coding_model.CodingModel:
    import runs
    from compressors import fingerprints
    from models import transformer
    from training import checkpoints

    config = runs.load_config(workdir)
    model_cfg, params, step = checkpoints.restore_params(workdir, step)
    if dtype:
        model_cfg = dataclasses.replace(model_cfg, dtype=dtype)
    tokenizer = runs.load_tokenizer(workdir, config)
    byte_level = tokenizer.name == "bytes"
    model = coding_model.CodingModel(
        name=name,
        kind="run",
        net=coding_model.FloatTransformer(model_cfg),
        params=params,
        fingerprint_fn=lambda: fingerprints.run_fingerprint(workdir, step, params=params)[1],
        tokenize=lambda data, max_tokens: (tokenizer.encode(data), 0),
        detokenize=lambda ids, mode: tokenizer.decode(ids),
        columns=() if byte_level else ("symbols",),
        chunk_bytes=model_cfg.context_length,
        chunk_tokens_fn=lambda chunk: chunk,  # a token covers a byte or more
        settings={"dtype": dtype} if dtype else {},
        num_params=transformer.num_params(params),
        step=step,
    )
    model.exact_twin = lambda: coding_model.integer_twin(model)
    return model


def _preset_names() -> tuple[str, ...]:
    from configs import sizes

    return tuple(sizes.PRESETS)


def _load_online(name: str, path: str, step: int | None, overrides: str):
    """`online:SIZE` (a `configs.sizes` preset: a seeded start) or `online:RUN_DIR` (a byte-level
    training run's parameters as the start; `step` its checkpoint)."""
    from compressors import online

    if path in _preset_names():
        if step is not None:
            raise ValueError("--step applies to online:RUN_DIR, not to a size.")
        return online.load(online.Recipe.parse(path, overrides), name)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"online:{path}: neither a size ({', '.join(_preset_names())}) nor a training run."
        )
    return online.load_from_run(_load_run(path, path, step, ""), overrides=overrides)


def for_stream(
    settings: dict, model: str | None = None, step: int | None = None, dtype: str = ""
) -> coding_model.CodingModel:
    """The model that decodes a stream whose coder settings are `settings` (decompress):
    `model` loaded by name (`step`, the stream's `dtype`), or, for a stream that describes its
    model whole (an online recipe), the model it describes: without `model` for a seeded start,
    with the run `model` names for `online:RUN_DIR`.

    Raises:
      ValueError: the stream's model must be named (a run or a checkpoint), `model` is not the
        run the stream started from, or the recipe is malformed or out of bounds.
      FileNotFoundError: no such model.
    """
    record = settings.get("online") if settings.get("model") == "online" else None
    continues_run = isinstance(record, dict) and bool(record.get("start"))
    if model is not None and not continues_run:
        return load(model, step=step, dtype=dtype)
    if settings.get("model") != "online":
        raise ValueError(
            "this stream was made by "
            f"{KINDS.get(settings.get('model'), 'a model')}: name it with --model"
        )
    from compressors import online

    recipe = online.Recipe.from_dict(record)
    if not recipe.start:
        return online.load(recipe, f"{ONLINE_PREFIX}{recipe.size}")
    if model is None:
        raise ValueError(
            f"this stream continues training run {recipe.start[:12]}: decompress with "
            "--model=RUN_DIR, that run"
        )
    kind, path = parse(model)
    if kind not in ("run", "online"):
        raise ValueError(f"--model={model}: this stream continues a training run, name it.")
    run = _load_run(path, path, step, "")
    if run.fingerprint != recipe.start:
        raise ValueError(
            f"--model={model} is not the run this stream continues (its parameters fingerprint "
            f"{run.fingerprint[:12]}, the stream's start {recipe.start[:12]}; see --step)"
        )
    return online.load_from_run(run, recipe=recipe)


MAX_PRETRAINED_CHUNK = 2048  # bytes per chunk by default for hf: models (the paper's chunks)


def _load_pretrained(name: str, path: str, dtype: str) -> coding_model.CodingModel:
    """A Hugging Face model directory (models/pretrained.py, data/pretrained_tokenizers.py)."""
    import jax

    from compressors import fingerprints, pretrained_model
    from data import pretrained_tokenizers as tokenizers
    from models import pretrained

    pretrained_model.check_model_dir(path)
    tokenizer = tokenizers.load_tokenizer(path)
    net, params = pretrained.load(path, start_token=tokenizer.bos_token_id, dtype=dtype)
    tokenizer.check_model_vocab(net.vocab_size)
    context = net.context_length

    def tokenize(data: bytes, max_tokens: int) -> tuple[np.ndarray, int]:
        ids, mode = tokenizer.encode_chunk(data)
        if mode != tokenizers.MODE_RAW and len(ids) > max_tokens:  # byte tokens fit (chunk_size)
            if tokenizer.byte_token_ids is None:
                return np.zeros(0, np.int32), tokenizers.MODE_RAW
            ids = tokenizer.byte_token_ids[np.frombuffer(data, np.uint8)]
            mode = tokenizers.MODE_BYTE_TOKENS
        if mode == tokenizers.MODE_RAW:
            return np.zeros(0, np.int32), mode  # stored raw, nothing for the model
        return ids, mode

    def chunk_tokens(chunk: int) -> int:
        # One more than the bytes (SentencePiece's leading space), at most the context; a chunk
        # must fit as byte tokens, one per byte.
        if chunk > context:
            raise ValueError(
                f"--chunk_size={chunk} exceeds the model's context of {context} tokens: a chunk "
                "must fit as byte tokens"
            )
        return min(context, chunk + 1)

    return coding_model.CodingModel(
        name=name,
        kind="hf",
        net=net,
        params=params,
        # The checkpoint's files, hashed as stored (no copy of the parameters off the device).
        fingerprint_fn=lambda: fingerprints.hf_fingerprint(path),
        tokenize=tokenize,
        detokenize=tokenizer.decode_chunk,
        columns=("symbols", "mode"),
        chunk_bytes=min(context, MAX_PRETRAINED_CHUNK),
        chunk_tokens_fn=chunk_tokens,
        settings={"dtype": dtype},
        num_params=sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)),
    )
