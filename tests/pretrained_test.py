"""Tests for models.pretrained and data.pretrained_tokenizers on tiny Hugging Face checkpoints.

The Flax models are checked against NumPy float64 implementations written here from each
architecture's definition (Hugging Face conventions: Llama's rotate_half rotary layout, GQA by
repeating kv heads, RMSNorm; GPT-2's Conv1D [in, out] weights and gelu_new).
"""

import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from compressors import mask_ascii
from data import pretrained_tokenizers as tokenizers
from models import pretrained
from tests import hf_fixtures as fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------------------------
# Independent NumPy references (float64)


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _causal_attention(q, k, v):
    """q, k, v [length, heads, head_dim] -> [length, heads * head_dim]."""
    length, _, head_dim = q.shape
    scores = np.einsum("tnh,snh->nts", q, k) / np.sqrt(head_dim)
    scores = scores + np.triu(np.full((length, length), -np.inf), 1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("nts,snh->tnh", weights, v).reshape(length, -1)


def _rope_reference(c):
    """Inverse frequencies and cos/sin scale, from transformers' rope definitions."""
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    base = c.get("rope_theta", 10000.0)
    inv = np.array([base ** (-2 * i / head_dim) for i in range(head_dim // 2)])
    s = c.get("rope_scaling") or {}
    kind = s.get("rope_type", s.get("type", "default"))
    if kind == "linear":
        return inv / s["factor"], 1.0
    if kind == "llama3":
        old, low, high, factor = (
            s["original_max_position_embeddings"],
            s["low_freq_factor"],
            s["high_freq_factor"],
            s["factor"],
        )
        out = []
        for f in inv:
            wavelength = 2 * math.pi / f
            if wavelength < old / high:
                out.append(f)
            elif wavelength > old / low:
                out.append(f / factor)
            else:
                smooth = (old / wavelength - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return np.array(out), 1.0
    if kind == "yarn":
        factor = s["factor"]
        original = s.get("original_max_position_embeddings", c["max_position_embeddings"])
        dim_for = lambda r: head_dim * math.log(original / (r * 2 * math.pi)) / (2 * math.log(base))  # noqa: E731
        low, high = max(math.floor(dim_for(32)), 0), min(math.ceil(dim_for(1)), head_dim - 1)
        out = []
        for i, f in enumerate(inv):
            keep = 1 - min(max((i - low) / (high - low), 0.0), 1.0)
            out.append(f * keep + f / factor * (1 - keep))
        return np.array(out), 0.1 * math.log(factor) + 1.0
    return inv, 1.0


def _llama_reference(weights, c, inputs):
    """Llama / Mistral / Qwen2 log-probs [length, vocab] after each of `inputs`."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    length = len(inputs)
    inv, scale = _rope_reference(c)
    angles = np.outer(np.arange(length), inv)
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb)[:, None] * scale, np.sin(emb)[:, None] * scale

    def rms(x, name):
        return w[name] * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + c["rms_norm_eps"])

    def linear(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rotate(x):
        half = x.shape[-1] // 2
        return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin

    x = w["model.embed_tokens.weight"][inputs]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, p + "input_layernorm.weight")
        q = rotate(linear(h, p + "self_attn.q_proj").reshape(length, heads, head_dim))
        k = rotate(linear(h, p + "self_attn.k_proj").reshape(length, kv_heads, head_dim))
        v = linear(h, p + "self_attn.v_proj").reshape(length, kv_heads, head_dim)
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
        x = x + linear(_causal_attention(q, k, v), p + "self_attn.o_proj")
        h = rms(x, p + "post_attention_layernorm.weight")
        gate = linear(h, p + "mlp.gate_proj")
        x = x + linear(
            gate / (1 + np.exp(-gate)) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj"
        )
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return _log_softmax(rms(x, "model.norm.weight") @ head.T)


def _gpt2_reference(weights, c, inputs):
    """GPT-2 log-probs [length, vocab] after each of `inputs`."""
    w = {name.removeprefix("transformer."): v.astype(np.float64) for name, v in weights.items()}
    length, heads = len(inputs), c["n_head"]

    def norm(x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        eps = c["layer_norm_epsilon"]
        return (x - mean) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def conv1d(x, name):
        return x @ w[name + ".weight"] + w[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    x = w["wte.weight"][inputs] + w["wpe.weight"][:length]
    for i in range(c["n_layer"]):
        p = f"h.{i}."
        q, k, v = np.split(conv1d(norm(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
        q, k, v = (t.reshape(length, heads, -1) for t in (q, k, v))
        x = x + conv1d(_causal_attention(q, k, v), p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(norm(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return _log_softmax(norm(x, "ln_f") @ w["wte.weight"].T)


# ----------------------------------------------------------------------------------------------
# Helpers


def _tokens(vocab, shape=(2, 12), seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def _reference(weights, c, tokens, start):
    """Reference log-probs [batch, length, vocab] of tokens after the start token."""
    forward = _gpt2_reference if c["model_type"] == "gpt2" else _llama_reference
    return np.stack([forward(weights, c, np.concatenate([[start], row[:-1]])) for row in tokens])


@functools.partial(jax.jit, static_argnames=("model", "blocks"))
def _decode_all(model, params, tokens, blocks=2):
    """Log-probs [batch, length, vocab] from the KV-cache step, in attention blocks (as
    models.lm_coder runs it); the token fed at index 0 is a dummy."""
    batch, length = tokens.shape

    def step(carry, t, kv_length):
        cache, prev = carry
        log_probs, cache = model.decode(params, prev, t, cache, kv_length)
        return (cache, tokens[:, t]), log_probs

    carry = (model.init_cache(None, batch, length), jnp.full((batch,), 7, jnp.int32))
    outputs, block = [], -(-length // blocks)
    for first in range(0, length, block):
        last = min(length, first + block)
        body = functools.partial(step, kv_length=last)
        carry, out = jax.lax.scan(body, carry, jnp.arange(first, last, dtype=jnp.int32))
        outputs.append(out)
    return jnp.concatenate(outputs).transpose(1, 0, 2)


LLAMA_VARIANTS = {
    "gqa": fixtures.llama_config(),
    "llama3_rope_tied_biases_head_dim": fixtures.llama_config(
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        rope_theta=500.0,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        head_dim=16,
    ),
    "qwen2_yarn_mqa": fixtures.llama_config(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        num_key_value_heads=1,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        rope_theta=1000.0,
        sliding_window=16,
        use_sliding_window=False,
        tie_word_embeddings=True,
    ),
    "mistral_linear_window": fixtures.llama_config(
        model_type="mistral",
        architectures=["MistralForCausalLM"],
        rope_scaling={"type": "linear", "factor": 2.0},
        sliding_window=32,
    ),
}


# ----------------------------------------------------------------------------------------------
# Architectures against the references


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_llama_family_matches_numpy_reference(tmp_path, variant):
    config = LLAMA_VARIANTS[variant]
    weights = fixtures.random_weights(config, seed=1)
    fixtures.write_model(tmp_path, config, weights)
    model, params = pretrained.load(tmp_path, start_token=1)
    tokens = _tokens(config["vocab_size"])
    log_probs = np.asarray(jax.jit(model.apply)(params, tokens))
    expected = _reference(weights, config, tokens, start=1)
    assert log_probs.dtype == np.float32 and log_probs.shape == expected.shape
    np.testing.assert_allclose(log_probs, expected, atol=2e-5)
    assert np.ptp(expected[0, -1]) > 3  # far from uniform: the comparison has teeth
    window = config.get("sliding_window") if variant.startswith("mistral") else None
    assert model.context_length == (window or config["max_position_embeddings"])


def test_gpt2_matches_numpy_reference(tmp_path):
    config = fixtures.gpt2_config()
    weights = fixtures.random_weights(config, seed=2)
    causal_buffer = np.tril(np.ones((1, 1, 64, 64), np.float32))  # as old checkpoints store it
    fixtures.write_model(tmp_path, config, weights | {"transformer.h.0.attn.bias": causal_buffer})
    model, params = pretrained.load(tmp_path, start_token=0)
    tokens = _tokens(config["vocab_size"])
    log_probs = np.asarray(jax.jit(model.apply)(params, tokens))
    np.testing.assert_allclose(log_probs, _reference(weights, config, tokens, start=0), atol=2e-5)
    assert model.context_length == 64 and model.vocab_size == 320


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_kv_cache_step_agrees_with_parallel_pass(tmp_path, kind):
    config = fixtures.gpt2_config() if kind == "gpt2" else LLAMA_VARIANTS["qwen2_yarn_mqa"]
    fixtures.write_model(tmp_path, config, fixtures.random_weights(config, seed=3))
    model, params = pretrained.load(tmp_path, start_token=5)
    tokens = _tokens(config["vocab_size"], (3, 20), seed=4)
    parallel = np.asarray(jax.jit(model.apply)(params, tokens))
    np.testing.assert_allclose(np.asarray(_decode_all(model, params, tokens)), parallel, atol=1e-5)


def test_model_without_start_token_codes_the_first_token_uniformly(tmp_path):
    config = fixtures.llama_config(bos_token_id=None)
    weights = fixtures.random_weights(config, seed=5)
    fixtures.write_model(tmp_path, config, weights)
    model, params = pretrained.load(tmp_path, start_token=None)
    tokens = _tokens(config["vocab_size"], (2, 10), seed=6)
    log_probs = np.asarray(jax.jit(model.apply)(params, tokens))
    np.testing.assert_allclose(log_probs[:, 0], -np.log(320), rtol=1e-6)
    # Position p reads token p and predicts token p + 1: no BOS anywhere.
    expected = np.stack([_llama_reference(weights, config, row) for row in tokens])
    np.testing.assert_allclose(log_probs[:, 1:], expected[:, :-1], atol=2e-5)
    np.testing.assert_allclose(np.asarray(_decode_all(model, params, tokens)), log_probs, atol=1e-5)


def test_bfloat16_checkpoint_loads_in_float32_and_bfloat16(tmp_path):
    config = fixtures.llama_config()
    weights = fixtures.random_weights(config, seed=7)
    fixtures.write_model(tmp_path, config, weights, dtype=ml_dtypes.bfloat16)
    tokens = _tokens(config["vocab_size"])
    expected = _reference(fixtures.bf16_round(weights), config, tokens, start=1)
    model, params = pretrained.load(tmp_path, start_token=1)
    assert params["norm"]["weight"].dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(jax.jit(model.apply)(params, tokens)), expected, atol=2e-5
    )
    model, params = pretrained.load(tmp_path, start_token=1, dtype="bfloat16")
    assert params["layers_0"]["mlp"]["up_proj"]["weight"].dtype == jnp.bfloat16
    log_probs = np.asarray(jax.jit(model.apply)(params, tokens))
    assert log_probs.dtype == np.float32
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1, rtol=1e-5)
    assert np.abs(log_probs - expected).mean() < 0.05  # bf16 compute, 8-bit mantissas
    np.testing.assert_allclose(np.asarray(_decode_all(model, params, tokens)), log_probs, atol=0.1)


def test_sharded_checkpoint_with_index_equals_single_file(tmp_path):
    config = fixtures.llama_config()
    weights = fixtures.random_weights(config, seed=8)
    fixtures.write_model(tmp_path / "single", config, weights)
    fixtures.write_model(tmp_path / "sharded", config, weights, num_shards=3)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) == 3
    _, single = pretrained.load(tmp_path / "single", start_token=1)
    _, sharded = pretrained.load(tmp_path / "sharded", start_token=1)
    jax.tree_util.tree_map(np.testing.assert_array_equal, single, sharded)


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from models import pretrained
    assert len(jax.devices()) == 4, jax.devices()
    out = {}
    for name, path, start in [("llama", sys.argv[1], 1), ("gpt2", sys.argv[2], 0)]:
        one, params_one = pretrained.load(path, start_token=start, shard=False)
        four, params_four = pretrained.load(path, start_token=start, shard=True)
        tokens = np.random.default_rng(0).integers(0, 320, (2, 12)).astype(np.int32)
        a = np.asarray(jax.jit(one.apply)(params_one, tokens))
        b = np.asarray(jax.jit(four.apply)(params_four, tokens))
        cache = four.init_cache(None, 2, 12)
        step = jax.jit(four.decode)
        first, cache = step(params_four, tokens[:, 0], np.int32(0), cache)
        second, _ = step(params_four, tokens[:, 0], np.int32(1), cache)
        specs = {
            "/".join(str(k.key) for k in path): [list(x.sharding.spec), len(x.sharding.device_set)]
            for path, x in jax.tree_util.tree_leaves_with_path(params_four)
        }
        out[name] = {
            "apply": float(np.abs(a - b).max()),
            "decode": float(np.abs(np.stack([first, second], 1) - a[:, :2]).max()),
            "specs": specs,
        }
    print(json.dumps(out))
    """
)


def test_parameters_shard_over_four_devices(tmp_path):
    paths = []
    for name, config in [("llama", fixtures.llama_config()), ("gpt2", fixtures.gpt2_config())]:
        fixtures.write_model(tmp_path / name, config, fixtures.random_weights(config, seed=9))
        paths.append(str(tmp_path / name))
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT, *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    llama, gpt2 = out["llama"]["specs"], out["gpt2"]["specs"]
    assert llama["layers_0/self_attn/k_proj/weight"] == [["model", None], 4]
    assert llama["embed_tokens/weight"] == [["model", None], 4]
    assert gpt2["h_0/attn/c_attn/weight"] == [[None, "model"], 4]  # [in, out]
    assert gpt2["h_0/ln_1/weight"] == [[], 4]  # replicated
    for name in ("llama", "gpt2"):
        assert out[name]["apply"] < 1e-5 and out[name]["decode"] < 1e-5, out[name]


def test_rope_variants():
    base = pretrained.config_from_hf(fixtures.llama_config())
    dynamic = pretrained.config_from_hf(
        fixtures.llama_config(rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    )
    np.testing.assert_array_equal(
        pretrained.rope_frequencies(dynamic)[0], pretrained.rope_frequencies(base)[0]
    )
    for variant in LLAMA_VARIANTS.values():
        inv_freq, scale = pretrained.rope_frequencies(pretrained.config_from_hf(variant))
        expected, expected_scale = _rope_reference(variant)
        np.testing.assert_allclose(inv_freq, expected, rtol=1e-6)
        assert scale == pytest.approx(expected_scale)
    with pytest.raises(ValueError, match="rope_type 'longrope' unsupported: supported are"):
        pretrained.config_from_hf(fixtures.llama_config(rope_scaling={"rope_type": "longrope"}))
    with pytest.raises(ValueError, match="lacks 'low_freq_factor'"):
        pretrained.config_from_hf(
            fixtures.llama_config(rope_scaling={"rope_type": "llama3", "factor": 8.0})
        )


# ----------------------------------------------------------------------------------------------
# Loading errors


def test_loading_errors_are_one_clear_line(tmp_path):
    config = fixtures.llama_config()
    weights = fixtures.random_weights(config)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        pretrained.load(tmp_path / "nothing", start_token=1)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    )
    with pytest.raises(ValueError, match="unsupported model_type 'bert'.*supported are llama"):
        pretrained.load(tmp_path / "bert", start_token=1)
    with pytest.raises(ValueError, match="config.json lacks 'hidden_size', needed for llama"):
        pretrained.config_from_hf({k: v for k, v in config.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="hidden_act 'gelu' unsupported"):
        pretrained.config_from_hf(fixtures.llama_config(hidden_act="gelu"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        pretrained.load(tmp_path / "empty", start_token=1)

    no_up_proj = {k: v for k, v in weights.items() if "layers.1.mlp.up" not in k}
    extra = {"model.layers.0.self_attn.q_norm.weight": np.ones(8, np.float32)}  # Qwen3's
    cases = {
        "missing": (no_up_proj, "missing tensor 'layers.1.mlp.up_proj.weight'"),
        "shape": (weights | {"model.norm.weight": np.ones(31, np.float32)}, r"\(31,\)"),
        "unexpected": (weights | extra, "unexpected tensor 'model.layers.0.self_attn.q_norm"),
    }
    for name, (tensors, message) in cases.items():
        fixtures.write_model(tmp_path / name, config, tensors)
        with pytest.raises(ValueError, match=message):
            pretrained.load(tmp_path / name, start_token=1)
    fixtures.write_model(tmp_path / "shards", config, weights, num_shards=2)
    (tmp_path / "shards" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors not found"):
        pretrained.load(tmp_path / "shards", start_token=1)
    with pytest.raises(ValueError, match="start_token 320 is outside"):
        pretrained.load(tmp_path / "missing", start_token=320)


# ----------------------------------------------------------------------------------------------
# Tokenizers and the byte protocol


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe")
    fixtures.write_bpe_tokenizer(path)
    (path / "config.json").write_text(json.dumps(fixtures.gpt2_config()))
    return path


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp")
    fixtures.write_sentencepiece(path)
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>"}}))
    return path


def _round_trip(tok, data):
    ids, mode = tok.encode_chunk(data)
    assert ids.dtype == np.int32
    assert tok.decode_chunk(ids, mode) == data
    return ids, mode


def test_byte_level_bpe_protocol(bpe_dir):
    tok = tokenizers.load_tokenizer(bpe_dir)
    assert tok.vocab_size == 320 and tok.bos_token_id == 0  # config.json's bos_token_id
    text = fixtures.corpus_text(3000).encode() + "é 漢字 € <|endoftext|>".encode()
    ids, mode = _round_trip(tok, text)
    assert mode == tokenizers.MODE_UTF8 and len(ids) < len(text) / 1.5  # merges apply
    assert 0 in ids  # the special token's literal text is parsed as itself, and kept
    random_bytes = np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    assert _round_trip(tok, random_bytes)[1] == tokenizers.MODE_LATIN1
    seven_bit, _ = mask_ascii(random_bytes)  # the paper's 'ascii' mode: plain UTF-8 text
    assert _round_trip(tok, seven_bit)[1] == tokenizers.MODE_UTF8
    empty, mode = _round_trip(tok, b"")
    assert empty.shape == (0,) and mode == tokenizers.MODE_UTF8
    # Byte tokens are the byte-level alphabet: 'A' is the token 'A'.
    assert tok.byte_token_ids is not None and tok.decode_text([tok.byte_token_ids[65]]) == "A"
    tok.check_model_vocab(320)
    with pytest.raises(ValueError, match="320 ids but the model only 300"):
        tok.check_model_vocab(300)


def test_sentencepiece_protocol_falls_back_to_byte_tokens(sentencepiece_dir):
    tok = tokenizers.load_tokenizer(sentencepiece_dir)
    assert tok.bos_token_id == 1  # from tokenizer_config.json's bos_token
    assert _round_trip(tok, b"Hello world")[1] == tokenizers.MODE_UTF8
    full_width = "ＡＢＣ１２３".encode()  # NFKC folds these to ASCII: not reproducible
    ids, mode = _round_trip(tok, full_width)
    assert mode == tokenizers.MODE_BYTE_TOKENS and len(ids) == len(full_width)
    assert tok.decode_text(ids) == "ＡＢＣ１２３"  # the pieces <0xEF> ... are real byte tokens
    double_space = b"two  spaces"  # SentencePiece's default normaliser collapses them
    assert _round_trip(tok, double_space)[1] == tokenizers.MODE_BYTE_TOKENS
    random_bytes = np.random.default_rng(1).integers(0, 256, 2000, np.uint8).tobytes()
    _round_trip(tok, random_bytes)
    with pytest.raises(ValueError, match="not a byte token"):
        tok.decode_chunk([300], tokenizers.MODE_BYTE_TOKENS)
    with pytest.raises(ValueError, match="unknown chunk mode 7"):
        tok.decode_chunk([1], 7)


def test_sentencepiece_without_byte_fallback_stores_raw_bytes(tmp_path):
    fixtures.write_sentencepiece(tmp_path, vocab_size=300, byte_fallback=False)
    tok = tokenizers.load_tokenizer(tmp_path)
    assert tok.byte_token_ids is None and tok.bos_token_id is None  # no config files at all
    data = "price: 5 €".encode()  # € is unknown to it
    ids, mode = _round_trip(tok, data)
    assert mode == tokenizers.MODE_RAW and list(ids) == list(data)
    assert _round_trip(tok, b"Hello world")[1] == tokenizers.MODE_UTF8


def test_missing_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        tokenizers.load_tokenizer(tmp_path)


def test_split_tokens():
    ids = np.arange(10)
    pieces = tokenizers.split_tokens(ids, 4)
    assert [len(p) for p in pieces] == [4, 4, 2] == [4] * 2 + [10 - 8]
    assert tokenizers.num_pieces(10, 4) == 3 and tokenizers.num_pieces(8, 4) == 2
    np.testing.assert_array_equal(np.concatenate(pieces), ids)
    assert [len(p) for p in tokenizers.split_tokens([], 4)] == [0]
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        tokenizers.split_tokens(ids, 0)
