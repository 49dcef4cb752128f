"""Tiny checkpoints in the Hugging Face layout, written inside tests (no network).

Weights are random, named and shaped from each architecture's definition (independently of
`models.pretrained`), and saved with `safetensors`; tokenizers are trained on a few hundred KB
of CPython's documentation (`pydoc_data.topics`, shipped with Python).
"""

import io
import json
import pathlib

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file


def corpus_text(num_chars: int = 200_000) -> str:
    """Real English prose with code, from CPython's bundled documentation."""
    from pydoc_data import topics

    return "\n".join(topics.topics[k] for k in sorted(topics.topics))[:num_chars]


def llama_config(**overrides) -> dict:
    """A tiny Llama config.json with grouped-query attention (4 query, 2 kv heads)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 320,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def gpt2_config(**overrides) -> dict:
    """A tiny GPT-2 config.json."""
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": 320,
        "n_positions": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    config.update(overrides)
    return config


def _llama_shapes(c: dict) -> dict[str, tuple]:
    d, inner, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head_dim = c.get("head_dim") or d // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    qwen = c["model_type"] == "qwen2"
    qkv_bias, o_bias = qwen or c.get("attention_bias"), not qwen and c.get("attention_bias")
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
        for name, out, fan_in in [("q", q, d), ("k", kv, d), ("v", kv, d), ("o", d, q)]:
            shapes[f"{p}self_attn.{name}_proj.weight"] = (out, fan_in)
            if (qkv_bias and name != "o") or (o_bias and name == "o"):
                shapes[f"{p}self_attn.{name}_proj.bias"] = (out,)
        for name, out, fan_in in [("gate", inner, d), ("up", inner, d), ("down", d, inner)]:
            shapes[f"{p}mlp.{name}_proj.weight"] = (out, fan_in)
            if c.get("mlp_bias"):
                shapes[f"{p}mlp.{name}_proj.bias"] = (out,)
    if not c.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


def _gpt2_shapes(c: dict) -> dict[str, tuple]:
    d, vocab = c["n_embd"], c["vocab_size"]
    inner = c.get("n_inner") or 4 * d
    shapes = {
        "transformer.wte.weight": (vocab, d),
        "transformer.wpe.weight": (c["n_positions"], d),
        "transformer.ln_f.weight": (d,),
        "transformer.ln_f.bias": (d,),
    }
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            shapes |= {f"{p}{norm}.weight": (d,), f"{p}{norm}.bias": (d,)}
        for name, fan_in, out in [
            ("attn.c_attn", d, 3 * d),
            ("attn.c_proj", d, d),
            ("mlp.c_fc", d, inner),
            ("mlp.c_proj", inner, d),
        ]:
            shapes |= {f"{p}{name}.weight": (fan_in, out), f"{p}{name}.bias": (out,)}
    return shapes


def random_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights named as the architecture's PyTorch checkpoint.

    Matrices get std 1/sqrt(fan_in) (fan_in is the smaller dimension for embeddings), norm
    weights 1 + N(0, 0.1^2), biases N(0, 0.1^2), so activations stay O(1) and the output
    distributions are far from uniform.
    """
    shapes = _gpt2_shapes(config) if config["model_type"] == "gpt2" else _llama_shapes(config)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in sorted(shapes.items()):
        if len(shape) == 2:
            fan_in = shape[0] if ".c_" in name else shape[-1]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif "norm" in name or ".ln_" in name:
            value = (
                1 + 0.1 * rng.standard_normal(shape)
                if name.endswith("weight")
                else 0.1 * (rng.standard_normal(shape))
            )
        else:
            value = 0.1 * rng.standard_normal(shape)
        weights[name] = value.astype(np.float32)
    return weights


def write_model(
    model_dir: pathlib.Path,
    config: dict,
    weights: dict[str, np.ndarray],
    num_shards: int = 1,
    dtype=np.float32,
) -> pathlib.Path:
    """Writes config.json and the weights (one file, or `num_shards` with an index).

    Args:
      model_dir: created if needed.
      config: config.json contents.
      weights: name -> array.
      num_shards: files to split the tensors over (round robin).
      dtype: stored dtype (e.g. `ml_dtypes.bfloat16`).

    Returns:
      model_dir.
    """
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config, indent=1))
    stored = {name: np.ascontiguousarray(w.astype(dtype)) for name, w in weights.items()}
    if num_shards == 1:
        save_file(stored, model_dir / "model.safetensors", metadata={"format": "pt"})
        return model_dir
    names = sorted(stored)
    weight_map = {}
    for shard in range(num_shards):
        file = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {n: stored[n] for n in names[shard::num_shards]}
        save_file(part, model_dir / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    index = {"metadata": {"total_size": sum(w.nbytes for w in stored.values())}}
    index["weight_map"] = weight_map
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return model_dir


def bf16_round(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 values a bfloat16 checkpoint of `weights` holds."""
    return {n: w.astype(ml_dtypes.bfloat16).astype(np.float32) for n, w in weights.items()}


def write_bpe_tokenizer(model_dir: pathlib.Path, vocab_size: int = 320) -> pathlib.Path:
    """Trains a GPT-2-style byte-level BPE (`<|endoftext|>` is id 0) into tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([corpus_text(100_000)], trainer=trainer)
    model_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(model_dir / "tokenizer.json"))
    return model_dir / "tokenizer.json"


def write_sentencepiece(
    model_dir: pathlib.Path, vocab_size: int = 512, byte_fallback: bool = True
) -> pathlib.Path:
    """Trains a SentencePiece BPE with NFKC normalisation into tokenizer.model.

    Ids: 0 <unk>, 1 <s>, 2 </s>, then the 256 byte pieces when `byte_fallback`.
    """
    import sentencepiece

    lines = [line for line in corpus_text(100_000).splitlines() if line.strip()]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=byte_fallback,
        character_coverage=1.0 if byte_fallback else 0.9995,
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "tokenizer.model").write_bytes(proto.getvalue())
    return model_dir / "tokenizer.model"
