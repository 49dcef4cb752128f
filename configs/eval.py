r"""Evaluation config: compression rates of classical compressors and trained models (Table 1).

Examples:
  python eval_compress.py --config=configs/eval.py --workdir=/tmp/eval   # pydocs, gzip + LZMA2
  python eval_compress.py --config=configs/eval.py:dataset=images,compressors=gzip,png,png_patch \
      --workdir=results
  python eval_compress.py --config=configs/eval.py --config.dataset=enwik9 \
      --config.compressors=gzip,lzma,png,flac,lm:runs/200K,lm:runs/3.2M --workdir=results

The arg string is `key=value,...` over: dataset (a spec of `data.sources.SOURCES`, e.g. `enwik9`,
`images`, `audio:PATH`, `file:PATH`) and compressors (which holds commas, so it is best given as
`--config.compressors=...`). Models join as `lm:RUN_DIR` entries (train.py workdirs) and
`hf:PATH` entries (pretrained checkpoints in the Hugging Face layout, see README). Every field
can be overridden by flag; the config is locked, so a misspelt field fails.
"""

import ml_collections

from configs import default

# pydocs:heldout is the part of the embedded corpus no model trained on it has seen: its last
# 10% (the valid and test splits of configs/default.py's 90/5/5 cut).
_ARG_DEFAULTS = {"dataset": "pydocs:heldout", "compressors": "gzip,lzma"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the evaluation config for `arg` (see the module docstring)."""
    a = default.parse_arg(arg, **_ARG_DEFAULTS)
    c = ml_collections.ConfigDict()
    c.dataset = a.dataset
    c.compressors = a.compressors  # comma separated: keys of compressors.COMPRESSORS, lm:RUN_DIR
    c.num_chunks = 0  # 0: the dataset's default (the paper's 488,281 for enwik9 etc., else all).
    c.chunk_size = 2048  # bytes per chunk (image chunks: 32 rows of chunk_size / 32 pixels).
    c.chunking = "both"  # classical compressors: 'chunked', 'unchunked' or 'both'; LMs: chunked.
    c.seven_bit = "none"  # 'none' (lossless, 8 bits), 'ascii', 'shift' or 'paper'.
    c.seven_bit_all = False  # also mask the data for classical compressors (paper: LMs only).
    c.seed = 0  # of the `random` dataset.
    c.workers = 0  # processes for classical compressors; 0: one per CPU core; 1: in-process.
    c.block_chunks = 256  # chunks per worker task.
    c.progress = True
    c.distributed = False  # call jax.distributed.initialize() (multi-host).
    c.shard_group = 256  # --shard=I/N: chunks per group; progress is saved after each group.
    c.overwrite = False  # rate again even records WORKDIR holds of the same data, model, settings
    c.dtype = ""  # models' compute dtype: 'float32' or 'bfloat16'; '' keeps the model's own
    # (a run's; float32 for hf:PATH). 'bfloat16' is faster on a GPU.

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # a local enwik8/enwik9 file for the enwik datasets.
    c.data.cache_dir = ""  # enwik downloads; '' -> $LMC_DATA_DIR or ~/.cache/lmcompress.
    c.data.tfds_data_dir = ""  # '' -> ~/tensorflow_datasets.
    c.data.manual_dir = ""  # ImageNet tars; '' -> tfds's default manual dir.
    c.data.tfds_download = True  # let tfds prepare missing datasets.
    c.data.modality = "auto"  # file: sources: auto (by content), text, image, audio or binary.

    c.lm = ml_collections.ConfigDict()
    c.lm.step = -1  # checkpoint step; -1: the newest.
    c.lm.chunks_per_device = 8  # rows per device per forward pass (log-loss path).
    c.lm.lanes = 0  # chunks per coder group on each device (coded path); 0: as many as the
    # device's memory holds (64 on a CPU), as compress.py's --lanes=0.
    c.lm.dtype = ml_collections.config_dict.placeholder(str)  # moved: --config.dtype
    c.lm.attention = ""  # '' keeps the run's; 'cudnn' forces flash attention on a GPU.
    c.lm.attention_blocks = 0  # the coder's attention blocks (models.lm_coder); 0: its default.
    c.lm.log_loss = True  # rate by the model's log-loss (parallel pass).
    c.lm.coded = True  # rate by the bytes the range coder writes (slow on a CPU).
    c.lm.verify = False  # decode every coded chunk back and fail on any mismatch.
    c.lm.portable = False  # code with the integer-only model (compress.py's default) instead.
    c.lm.prefetch = 4  # blocks loaded ahead by a background thread.

    # hf:PATH entries (compressors/pretrained_model.py); dtype and lm.log_loss, coded, verify,
    # lanes, chunks_per_device (rows of the log-loss pass) and prefetch apply to them too.
    c.hf = ml_collections.ConfigDict()
    c.hf.top_k = 100  # the paper's top-k coding with an escape; 0: the whole vocabulary, exact.
    c.hf.dtype = ml_collections.config_dict.placeholder(str)  # moved: --config.dtype
    c.hf.max_tokens = 0  # tokens per piece of a chunk; 0: the model's context (longer: split).
    c.hf.attention_blocks = 0  # the coder's attention blocks (each compiles once); 0: auto.

    # online:SIZE entries (compressors/online.py): the whole dataset as one stream, coded by a
    # model that learns as it goes; no parameters sent (adjusted rate = raw rate).
    c.online = ml_collections.ConfigDict()
    c.online.recipe = ""  # key=value,... refinements of the recipe, as compress.py's --recipe.
    return c.lock()
