import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from models import transformer


def _model(**overrides):
    config = default.get_config("size=test")
    model_cfg = transformer.TransformerConfig.from_config(config.model, vocab_size=256)
    model_cfg = transformer.dataclasses.replace(model_cfg, **overrides)
    params = transformer.init_params(model_cfg, jax.random.key(1))
    return model_cfg, transformer.Transformer(model_cfg), params


def _tokens(batch, length, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)), jnp.int32)


@pytest.mark.parametrize(
    "norm,positions", [("post", "rotary"), ("pre", "rotary"), ("post", "sinusoidal")]
)
def test_causal(norm, positions):
    _, model, params = _model(norm=norm, positions=positions)
    tokens = _tokens(2, 24)
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 7) % 256)
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, changed)
    # Position t predicts token t from tokens < t: outputs up to t=10 see no change.
    np.testing.assert_array_equal(a[:, :11], b[:, :11])
    assert not np.allclose(a[:, 11:], b[:, 11:])


@pytest.mark.parametrize(
    "norm,positions", [("post", "rotary"), ("pre", "rotary"), ("post", "sinusoidal")]
)
def test_incremental_matches_parallel(norm, positions):
    model_cfg, model, params = _model(norm=norm, positions=positions)
    tokens = _tokens(3, 32, seed=2)
    parallel = model.apply({"params": params}, tokens)

    @jax.jit
    def step(prev, index, cache):
        return model.apply({"params": params}, prev, index, cache, method=model.decode)

    @functools.partial(jax.jit, static_argnums=3)
    def prefix_step(prev, index, cache, kv_length):
        return model.apply({"params": params}, prev, index, cache, kv_length, method=model.decode)

    cache = transformer.init_cache(model_cfg, batch_size=3, max_length=32)
    prefix_cache = cache
    prev = jnp.zeros(3, jnp.int32)
    outputs, prefix_outputs = [], []
    for t in range(32):
        log_probs, cache = step(prev, jnp.int32(t), cache)
        outputs.append(log_probs)
        # Attending only to a filled prefix (kv_length > t) changes nothing.
        log_probs, prefix_cache = prefix_step(
            prev, jnp.int32(t), prefix_cache, 16 if t < 16 else 32
        )
        prefix_outputs.append(log_probs)
        prev = tokens[:, t]
    np.testing.assert_allclose(np.stack(outputs, 1), parallel, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.stack(prefix_outputs, 1), parallel, atol=2e-5, rtol=0)


def _reference_sinusoids(length: int, width: int) -> np.ndarray:
    """The reference's sinusoid_position_encoding, written out in NumPy float64."""
    inv_freq = 1e4 ** (-np.arange(0, width + 1, 2) / width)
    angles = np.arange(length)[:, None] * inv_freq[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)[:, :width]


def test_sinusoids_are_the_references_added_to_the_embedding():
    model_cfg, model, params = _model(positions="sinusoidal")
    positions = jnp.broadcast_to(jnp.arange(40), (2, 40))
    got = transformer._sinusoids(positions, model_cfg.width)
    np.testing.assert_allclose(got[1], _reference_sinusoids(40, model_cfg.width), atol=2e-5)
    assert got.shape == (2, 40, 32) and float(got[0, 0, 0]) == 0.0 and float(got[0, 0, -1]) == 1
    # Same parameters, other positions: same count, different predictions past position 0.
    rotary = transformer.Transformer(transformer.dataclasses.replace(model_cfg, positions="rotary"))
    tokens = _tokens(2, 16)
    a = model.apply({"params": params}, tokens)
    b = rotary.apply({"params": params}, tokens)
    assert not np.allclose(a[:, 1:], b[:, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="model.positions"):
        _model(positions="learned")


def test_configs_without_positions_load_as_rotary():
    config = default.get_config("size=test")
    assert config.model.positions == "rotary"
    saved = {k: v for k, v in config.model.to_dict().items() if k != "positions"}  # older run
    assert transformer.TransformerConfig.from_config(saved, 256).positions == "rotary"
    assert transformer.TransformerConfig.from_config(config.model, 256) == (
        transformer.TransformerConfig.from_config(saved, 256)
    )


def test_log_probs_normalised_float32_and_bf16():
    for dtype in ("float32", "bfloat16"):
        _, model, params = _model(dtype=dtype)
        log_probs = model.apply({"params": params}, _tokens(2, 16))
        assert log_probs.dtype == jnp.float32
        assert log_probs.shape == (2, 16, 256)
        np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, atol=1e-5)
        assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32


def test_closed_form_count_both_layouts():
    for norm in ("post", "pre"):
        model_cfg, _, params = _model(norm=norm)
        assert transformer.num_params(params) == transformer.closed_form_num_params(model_cfg)


def test_bad_model_config_fails_clearly():
    with pytest.raises(ValueError, match="heads"):
        _model(num_heads=3)
    with pytest.raises(ValueError, match="model.attention"):
        _, model, params = _model()
        bad = transformer.Transformer(transformer.dataclasses.replace(model.cfg, attention="x"))
        bad.apply({"params": params}, _tokens(1, 4))


def test_dtype_and_attention_choices():
    assert transformer.compute_dtype("auto", "gpu") == jnp.bfloat16
    assert transformer.compute_dtype("auto", "tpu") == jnp.bfloat16
    assert transformer.compute_dtype("auto", "cpu") == jnp.float32
    assert transformer.compute_dtype("float32", "gpu") == jnp.float32
    choose = transformer.attention_implementation
    assert choose("auto", jnp.bfloat16, 32, "gpu") == "cudnn"
    assert choose("auto", jnp.float32, 32, "gpu") == "xla"  # cuDNN wants 16-bit floats
    assert choose("auto", jnp.bfloat16, 256, "gpu") == "xla"  # head too large for it
    assert choose("auto", jnp.bfloat16, 12, "gpu") == "xla"  # not a multiple of 8
    assert choose("auto", jnp.bfloat16, 32, "cpu") == "xla"
    assert choose("cudnn", jnp.float32, 32, "cpu") == "cudnn"  # asked for: jax says if it can't
    with pytest.raises(ValueError, match="model.attention"):
        choose("flash", jnp.float32, 32)
    with pytest.raises(ValueError, match="model.dtype"):
        transformer.compute_dtype("fp8")


def test_one_hot_embedding_equals_the_lookup():
    model_cfg, model, params = _model()
    tokens = _tokens(2, 16, seed=3)
    table = params["embed"]["embedding"]
    got = model.apply({"params": params}, tokens[:, :, None][..., 0], jnp.zeros_like(tokens),
                      method=model._embed)  # fmt: skip
    np.testing.assert_array_equal(got, table[tokens] * jnp.sqrt(jnp.float32(model_cfg.width)))


@pytest.mark.parametrize("kv_dtype, atol", [("bfloat16", 0.05), ("int8", 0.05)])
def test_smaller_kv_caches_stay_close_to_the_parallel_pass(kv_dtype, atol):
    model_cfg, model, params = _model()
    tokens = _tokens(2, 24, seed=4)
    parallel = model.apply({"params": params}, tokens)
    step = jax.jit(lambda p, i, c: model.apply({"params": params}, p, i, c, method=model.decode))
    cache = transformer.init_cache(model_cfg, 2, 24, kv_dtype=kv_dtype)
    assert cache["k0"].dtype == jnp.dtype(kv_dtype) and cache["k0"].shape == (2, 2, 24, 16)
    prev, outputs = jnp.zeros(2, jnp.int32), []
    for t in range(24):
        log_probs, cache = step(prev, jnp.int32(t), cache)
        outputs.append(log_probs)
        prev = tokens[:, t]
    np.testing.assert_allclose(np.stack(outputs, 1), parallel, atol=atol, rtol=0)
    with pytest.raises(ValueError, match="kv_dtype"):
        transformer.init_cache(model_cfg, 1, 4, kv_dtype="fp8")
