import dataclasses
import fractions
import functools
import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from coding import quantize
from configs import default
from models import integer, transformer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cfg(norm="post", size="test", **overrides):
    config = default.get_config(f"size={size}")
    cfg = transformer.TransformerConfig.from_config(config.model, vocab_size=256)
    return dataclasses.replace(cfg, norm=norm, **overrides)


def _numpy_params(cfg, seed=0, std=0.2):
    """Float params drawn by NumPy: the same bytes whatever XLA's instruction set."""
    shapes = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(seed)
    values = [rng.normal(0, std, leaf.shape).astype(np.float32) for leaf in leaves]
    return jax.tree_util.tree_unflatten(tree, values)


def _text_tokens():
    """Real text (the Transformer's own source and docstrings) as byte ids."""
    data = pathlib.Path(transformer.__file__).read_bytes()
    return np.frombuffer(data, np.uint8).astype(np.int32)


def _train(cfg, steps=150, batch=16, seed=0):
    """A briefly trained model (Adam on windows of real text), float params."""
    data = _text_tokens()[: -cfg.context_length * 8]  # the tail is held out
    model = transformer.Transformer(cfg)
    params = transformer.init_params(cfg, jax.random.key(seed))
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, tokens):
        def loss(p):
            log_probs = model.apply({"params": p}, tokens)
            return -jnp.mean(jnp.take_along_axis(log_probs, tokens[..., None], -1))

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    length = cfg.context_length
    for _ in range(steps):
        starts = rng.integers(0, len(data) - length, batch)
        tokens = np.stack([data[s : s + length] for s in starts])
        params, opt_state = step(params, opt_state, jnp.asarray(tokens))
    return params


@functools.cache
def _model(kind, norm):
    """(cfg, float params, integer params) for 'random' or 'trained' test-preset models."""
    cfg = _cfg(norm)
    params = _train(cfg) if kind == "trained" else _numpy_params(cfg)
    return cfg, params, integer.quantize_params(cfg, params)


_tables = jax.jit(integer.tables)
_tables_in_blocks = jax.jit(integer.tables, static_argnames="query_block")
_step = jax.jit(integer.decode_step, static_argnums=4)


def _decode_all(int_params, tokens, kv_lengths):
    """Tables of every position through the KV-cache step; kv_lengths(t) -> static length."""
    batch, length = tokens.shape
    cache = integer.init_cache(int_params, batch, length)
    prev, out = jnp.zeros(batch, jnp.int32), []
    for t in range(length):
        table, cache = _step(int_params, prev, jnp.int32(t), cache, kv_lengths(t))
        out.append(np.asarray(table))
        prev = tokens[:, t]
    return np.stack(out, 1)


@pytest.mark.parametrize("norm,kind", [("post", "trained"), ("pre", "random")])
def test_tables_identical_alone_in_batches_and_step_by_step(kind, norm):
    cfg, _, int_params = _model(kind, norm)
    rng = np.random.default_rng(1)
    chunk = _text_tokens()[-32:][None]  # [1, 32], held-out text
    alone = np.asarray(_tables(int_params, jnp.asarray(chunk)))
    assert alone.dtype == np.int32 and alone.shape == (1, 32, 256)
    np.testing.assert_array_equal(alone.sum(-1), 1 << 16)
    assert alone.min() >= 1
    for batch, row in ((1, 0), (3, 1), (16, 9)):
        tokens = rng.integers(0, 256, (batch, 32)).astype(np.int32)
        tokens[row] = chunk[0]
        together = np.asarray(_tables(int_params, jnp.asarray(tokens)))
        np.testing.assert_array_equal(together[row], alone[0])
    # A prefix computed on its own gives the same tables as inside the longer chunk.
    prefix = np.asarray(_tables(int_params, jnp.asarray(chunk[:, :17])))
    np.testing.assert_array_equal(prefix[0], alone[0, :17])
    # The KV-cache step, full cache and filled prefixes only, in a batch of 3.
    tokens = rng.integers(0, 256, (3, 32)).astype(np.int32)
    tokens[2] = chunk[0]
    parallel = np.asarray(_tables(int_params, jnp.asarray(tokens)))
    for kv_lengths in (lambda t: None, lambda t: 16 if t < 16 else None):
        stepped = _decode_all(int_params, jnp.asarray(tokens), kv_lengths)
        np.testing.assert_array_equal(stepped, parallel)
    # Attention in blocks of queries, each against the keys it can see (4 of 8; 6 of 5 or 6).
    assert integer._query_blocks(32, integer.QUERY_BLOCK) == [(0, 32)]  # `parallel`: one block
    assert integer._query_blocks(2048, 64)[:2] == [(0, 256), (256, 512)]  # at most 8 blocks
    block = 8 if norm == "post" else 5
    blocked = _tables_in_blocks(int_params, jnp.asarray(tokens), query_block=block)
    np.testing.assert_array_equal(np.asarray(blocked), parallel)


def test_sinusoidal_positions():
    if "positions" not in {f.name for f in dataclasses.fields(transformer.TransformerConfig)}:
        pytest.skip("this transformer has rotary positions only")
    cfg = _cfg("pre", positions="sinusoidal")
    params = _numpy_params(cfg, seed=5, std=0.1)
    int_params = integer.quantize_params(cfg, params)
    assert "cos" not in int_params.arrays["tables"]
    tokens = jnp.asarray(_text_tokens()[-48:].reshape(2, 24))
    parallel = np.asarray(_tables(int_params, tokens))
    np.testing.assert_array_equal(_decode_all(int_params, tokens, lambda t: None), parallel)
    log_probs = transformer.Transformer(cfg).apply({"params": params}, tokens)
    float_tables = quantize.quantize_np(np.exp(np.asarray(log_probs)))
    assert np.abs(parallel - float_tables).max() <= 0.01 * (1 << 16)


_ISA_SCRIPT = """
import hashlib, json, sys
import jax, jax.numpy as jnp, numpy as np
from configs import default
from models import integer, transformer
cfg = transformer.TransformerConfig.from_config(default.get_config("size=test").model, 256)
saved = np.load(sys.argv[1])
leaves, tree = jax.tree_util.tree_flatten(jax.eval_shape(
    lambda: transformer.init_params(cfg, jax.random.key(0))))
params = jax.tree_util.tree_unflatten(tree, [saved[f"p{i}"] for i in range(len(leaves))])
tokens = jnp.asarray(saved["tokens"])
log_probs = jax.jit(transformer.Transformer(cfg).apply)({"params": params}, tokens)
int_params = integer.quantize_params(cfg, params)
tables = jax.jit(integer.tables)(int_params, tokens)
step = jax.jit(integer.decode_step)
cache, prev, stepped = integer.init_cache(cfg, tokens.shape[0], 8), tokens[:, 0] * 0, []
for t in range(8):
    table, cache = step(int_params, prev, jnp.int32(t), cache)
    stepped.append(table)
    prev = tokens[:, t]
digest = lambda a: hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()
print(json.dumps({"float": digest(log_probs), "tables": digest(tables),
                  "steps": digest(jnp.stack(stepped, 1))}))
"""


def test_tables_identical_under_other_instruction_sets(tmp_path):
    """The same input and parameters in processes whose XLA targets different CPU features.

    Measured here (Xeon with AVX-512, jax 0.11.2): the float32 log-probs differ between the
    default target, SSE4.2 and AVX (the check below that they are not all equal shows this test
    can see a difference); the integer tables and step-by-step tables are identical.
    """
    cfg = _cfg()
    params = _numpy_params(cfg, seed=3)
    tokens = np.random.default_rng(3).integers(0, 256, (4, 48)).astype(np.int32)
    leaves = jax.tree_util.tree_leaves(params)
    path = tmp_path / "inputs.npz"
    np.savez(path, tokens=tokens, **{f"p{i}": leaf for i, leaf in enumerate(leaves)})
    script = tmp_path / "isa.py"
    script.write_text(_ISA_SCRIPT)
    results = {}
    for isa in ("", "SSE4_2", "AVX"):
        env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
        flags = os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa={isa}" if isa else flags
        out = subprocess.run(
            [sys.executable, str(script), str(path)],
            cwd=REPO, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[isa or "default"] = json.loads(out.stdout.strip().splitlines()[-1])
    assert len({r["tables"] for r in results.values()}) == 1, results
    assert len({r["steps"] for r in results.values()}) == 1, results
    # Teeth: the float path does change with the instruction set on this kind of machine.
    assert len({r["float"] for r in results.values()}) > 1, results
    # And the tables match this process's.
    here = np.asarray(_tables(integer.quantize_params(cfg, params), jnp.asarray(tokens)))
    assert hashlib.sha256(here.tobytes()).hexdigest() == results["default"]["tables"]


# Where floats give exact integers (models/integer.py's docstring), and their dtype: the parallel
# pass's two products on a CPU; the integer square root, and on a CPU the tables' division, in
# both passes.
_EXACT_FLOATS = {
    "_scores_float64": jnp.float64,
    "_weighted_sum_float32": jnp.float32,
    "_isqrt": jnp.float32,
    "_floor_mul_div_float64": jnp.float64,
}
_IN_STEP = {"_isqrt", "_floor_mul_div_float64"}


def _float_vars(jaxpr):
    """Every variable of a float dtype in a jaxpr and its sub-jaxprs, with its primitive and
    the model's function that made it."""
    found = []
    for var in list(jaxpr.invars) + list(jaxpr.constvars) + list(jaxpr.outvars):
        if hasattr(var, "aval") and jnp.issubdtype(var.aval.dtype, jnp.inexact):
            found.append(("io", var.aval, None))
    for eqn in jaxpr.eqns:
        for var in list(eqn.invars) + list(eqn.outvars):
            if jnp.issubdtype(var.aval.dtype, jnp.inexact):
                names = {f.function_name for f in eqn.source_info.traceback.frames}
                where = next((f for f in _EXACT_FLOATS if f in names), sorted(names))
                found.append((eqn.primitive.name, var.aval, where))
        for sub in jex.core.jaxprs_in_params(eqn.params):
            found += _float_vars(sub)
    return found


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_no_float_anywhere(norm):
    """No float in either pass but in the functions whose floats give exact integers."""
    _, _, int_params = _model("random", norm)
    tokens = jnp.zeros((2, 16), jnp.int32)
    parallel = jax.make_jaxpr(integer.tables)(int_params, tokens)
    cache = integer.init_cache(int_params, 2, 16)
    step = functools.partial(integer.decode_step, kv_length=8)
    stepped = jax.make_jaxpr(step)(int_params, tokens[:, 0], jnp.int32(3), cache)
    for closed in (parallel, stepped):
        jaxpr = getattr(closed, "jaxpr", closed)
        assert len(jaxpr.eqns) > 100
        found = _float_vars(jaxpr)
        assert all(where in _EXACT_FLOATS for *_, where in found), found
        assert all(aval.dtype == _EXACT_FLOATS[where] for _, aval, where in found), found
    assert {where for *_, where in _float_vars(parallel.jaxpr)} == set(_EXACT_FLOATS)
    assert {where for *_, where in _float_vars(stepped.jaxpr)} == _IN_STEP


def _large_params(cfg, scale):
    """Trained-like magnitudes, scaled: weights N(0, 0.05), LayerNorm scales up to 3."""
    shapes = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            values = rng.uniform(0.5, 3.0, leaf.shape)
        elif "bias" in name:
            values = rng.uniform(-0.5, 0.5, leaf.shape)
        else:
            values = rng.uniform(-0.087, 0.087, leaf.shape)  # std 0.05
        return (values * scale).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("norm,layers", [("pre", 12), ("post", 3)])
def test_widest_preset_bounds_hold_and_overflow_is_refused(norm, layers):
    cfg = _cfg(norm, size="100M", num_layers=layers)  # width 832, MLP 3328, context 2048
    assert cfg.head_dim == 64 and cfg.context_length == 2048
    spec = integer.quantize_params(cfg, _large_params(cfg, 1.0)).spec
    assert spec.bound_bits <= integer.HEADROOM_BITS
    formats = [v for ls in spec.layers for k, v in dataclasses.asdict(ls).items() if k[:2] == "f_"]
    # The module docstring's claim: at least 10 fraction bits everywhere for these magnitudes.
    assert min(formats + [spec.f_emb, spec.f_final, spec.f_logits]) >= 10
    with pytest.raises(ValueError, match="too large for the integer coding path"):
        integer.quantize_params(cfg, _large_params(cfg, 300.0))


@pytest.mark.parametrize(
    "length,a_digits,w_digits",
    [(3328, 2, 1), (3328, 2, 2), (832, 2, 2), (64, 2, 2)],
)
def test_digit_products_exact_at_extremes(length, a_digits, w_digits):
    """Largest activations times largest weights: the combination neither overflows nor errs."""
    rng = np.random.default_rng(length)
    a_max, w_max = (1 << (7 * a_digits)) - 1, (1 << (7 * w_digits)) - 1
    a = rng.choice([-a_max, a_max], (4, length)).astype(np.int64)
    a[0] = a_max  # all one sign: the largest possible sum
    w = rng.choice([-w_max, w_max], (length, 8)).astype(np.int64)
    w[:, 0] = w_max
    r = integer._dot_shift(length, a_digits, w_digits)
    got = integer._digit_dot(
        integer._digits(jnp.asarray(a, jnp.int32), a_digits),
        jnp.asarray(integer._digits_np(w, w_digits)),
        "i...k,jkn->ij...n",
        r,
    )
    exact = (a @ w).astype(np.float64) / 2.0**r
    terms = a_digits * w_digits
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=0, atol=terms / 2 + 1e-9)
    assert abs(exact).max() < 2**30


def test_attention_sums_exact_at_extremes():
    """Scores over head_dim 64 and sums over 2048 keys at the largest magnitudes, through the
    single-query (KV-cache) code, the many-query (parallel) code and the int8 digit code other
    platforms run for many queries: exact and equal."""
    rng = np.random.default_rng(0)
    top = (1 << 14) - 1
    q = rng.choice([-top, top], (1, 2, 2, 64)).astype(np.int64)  # [B, H, Tq, D]
    k = rng.choice([-top, top], (1, 2, 2048, 64)).astype(np.int64)
    k[:, :, 0] = q[:, :, 0]  # the largest possible score
    r = integer._dot_shift(64, 2, 2)
    want = (np.einsum("bhqd,bhkd->bhqk", q, k) + (1 << (r - 1))) >> r
    many = integer._scores(jnp.asarray(q, jnp.int32), jnp.asarray(k, jnp.int16), r)
    one = integer._scores(jnp.asarray(q[:, :, :1], jnp.int32), jnp.asarray(k, jnp.int16), r)
    np.testing.assert_array_equal(np.asarray(many), want)
    np.testing.assert_array_equal(np.asarray(one), want[:, :, :1])
    # What other platforms run for several queries, run here: the same integers.
    digits = integer._scores_digits(jnp.asarray(q, jnp.int32), jnp.asarray(k, jnp.int16), r)
    np.testing.assert_array_equal(np.asarray(digits), want)
    p = rng.integers(0, 1 << 16, (1, 2, 2, 2048)).astype(np.int64)
    w = np.minimum((p << 14) // p.sum(-1, keepdims=True), top)
    v = rng.choice([-top, top], (1, 2, 2048, 64)).astype(np.int64)
    v[..., 0] = top  # all one sign: the largest possible sum
    want = np.einsum("bhqk,bhkd->bhqd", w, v)
    many = integer._weighted_sum(jnp.asarray(w, jnp.int32), jnp.asarray(v, jnp.int16))
    one = integer._weighted_sum(jnp.asarray(w[:, :, :1], jnp.int32), jnp.asarray(v, jnp.int16))
    np.testing.assert_array_equal(np.asarray(many), want)
    np.testing.assert_array_equal(np.asarray(one), want[:, :, :1])
    digits = integer._weighted_sum_digits(jnp.asarray(w, jnp.int32), jnp.asarray(v, jnp.int16))
    np.testing.assert_array_equal(np.asarray(digits), want)
    # The float32 form at its own extreme: the weights' largest sum, 2**14 + 1, on one value.
    w[0, 0, 0] = 0
    w[0, 0, 0, :2] = (1 << 14) - 1, 2
    for form in (integer._weighted_sum_float32, integer._weighted_sum_digits):
        got = form(jnp.asarray(w, jnp.int32), jnp.asarray(v, jnp.int16))
        np.testing.assert_array_equal(np.asarray(got), np.einsum("bhqk,bhkd->bhqd", w, v))
    assert np.abs(want).max() < 2**28


def _log_loss_bits(cfg, params, tokens):
    log_probs = transformer.Transformer(cfg).apply({"params": params}, jnp.asarray(tokens))
    picked = jnp.take_along_axis(log_probs, jnp.asarray(tokens)[..., None], -1)
    return -float(jnp.sum(picked)) / math.log(2), np.asarray(log_probs)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_trained_model_code_length_close_to_float(norm):
    cfg, params, int_params = _model("trained", norm)
    tokens = _text_tokens()[-cfg.context_length * 8 :].reshape(8, cfg.context_length)
    float_bits, log_probs = _log_loss_bits(cfg, params, tokens)
    int_bits = integer.code_length_bits(_tables(int_params, jnp.asarray(tokens)), tokens).sum()
    float_table_bits = integer.code_length_bits(quantize.quantize_np(np.exp(log_probs)), tokens)
    bits_per_byte = float_bits / tokens.size
    assert bits_per_byte < 5.0  # it did learn something: far below 8 bits per byte
    assert abs(int_bits / float_bits - 1) < 0.03, (int_bits, float_bits)
    assert abs(int_bits / float_table_bits.sum() - 1) < 0.03


def test_refuses_bad_parameters_and_shapes():
    cfg, params, _ = _model("random", "post")
    broken = jax.tree_util.tree_map(lambda x: x, params)
    broken["block_0"]["mlp_in"]["bias"] = np.full_like(broken["block_0"]["mlp_in"]["bias"], np.nan)
    with pytest.raises(ValueError, match="NaN or inf"):
        integer.quantize_params(cfg, broken)
    with pytest.raises(ValueError, match="weight_digits"):
        integer.quantize_params(cfg, params, weight_digits=3)
    wide = _cfg(width=2048, num_heads=32)
    with pytest.raises(ValueError, match="limit of 1024"):
        integer.quantize_params(wide, None)
    with pytest.raises(ValueError, match="context"):
        integer.quantize_params(_cfg(context_length=1 << 15), None)


def test_exact_tables_against_float64():
    x = -8 + np.arange(1025) / 64
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(integer._gelu_table() / 2**16, gelu, rtol=0, atol=2**-16)
    f = np.arange(4096)
    np.testing.assert_allclose(integer._exp2_table(), 2.0 ** (30 - f / 4096), rtol=2**-29)
    cos, sin = integer._rotary_tables(10_000.0, 16, 2048)
    angles = np.arange(2048)[:, None] * 10_000.0 ** (-np.arange(16) / 16)
    np.testing.assert_allclose(cos / 2**14, np.cos(angles), rtol=0, atol=2**-14)
    np.testing.assert_allclose(sin / 2**14, np.sin(angles), rtol=0, atol=2**-14)
    assert integer._pi() >> (integer._PREC - 64) == 0x3243F6A8885A308D3  # pi in hexadecimal
    assert integer._ln2() >> (integer._PREC - 64) == 0xB17217F7D1CF79AB


def test_integer_sqrt_exact():
    rng = np.random.default_rng(0)
    roots = np.arange(0, 46341, dtype=np.int64)
    n = np.concatenate(
        [rng.integers(0, 2**31 - 1, 200_000), roots**2, roots**2 - 1, roots**2 + 1, [2**31 - 1]]
    )
    n = np.clip(n, 0, 2**31 - 1)
    got = np.asarray(integer._isqrt(jnp.asarray(n, jnp.int32))).astype(np.int64)
    assert np.all(got * got <= n) and np.all((got + 1) ** 2 > n)


@pytest.mark.parametrize("error", [-0.9, 0.9])
def test_integer_sqrt_corrects_a_float_root_off_by_almost_one(monkeypatch, error):
    """The integer checks, not the float's rounding, make `_isqrt` exact."""
    sqrt = jnp.sqrt
    monkeypatch.setattr(integer.jnp, "sqrt", lambda x: sqrt(x) + error)
    roots = np.arange(1, 46341, dtype=np.int64)
    n = np.clip(np.concatenate([roots**2, roots**2 - 1, roots**2 + roots]), 0, 2**31 - 1)
    got = np.asarray(integer._isqrt(jnp.asarray(n, jnp.int32))).astype(np.int64)
    assert np.all(got * got <= n) and np.all((got + 1) ** 2 > n)


def test_layer_norm_and_gelu_accuracy():
    rng = np.random.default_rng(0)
    for width in (64, 832):
        x = rng.normal(0.3, 2.0, (200, width))
        f_in = 16
        xi = np.round(x * 2**f_in).astype(np.int32)
        xq = xi / 2**f_in
        scale = rng.normal(1, 0.2, width).astype(np.float32)
        bias = rng.normal(0, 0.1, width).astype(np.float32)
        ln = integer._LayerNormQ({"scale": scale, "bias": bias}, width, "ln")
        got = integer._layer_norm(
            jnp.asarray(xi), f_in, ln.arrays(20), ln.kg, 20, integer._eps_constant(width)
        )
        want = (xq - xq.mean(-1, keepdims=True)) / np.sqrt(xq.var(-1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(np.asarray(got) / 2**20, want * scale + bias, atol=2e-4)
    h = rng.normal(0, 4, 10_000)
    hi = np.round(h * 2**16).astype(np.int32)
    hq = hi / 2**16
    gelu = 0.5 * hq * (1 + np.tanh(np.sqrt(2 / np.pi) * (hq + 0.044715 * hq**3)))
    got = integer._gelu(jnp.asarray(hi), 16, jnp.asarray(integer._gelu_table()))
    np.testing.assert_allclose(np.asarray(got) / 2**16, gelu, rtol=0, atol=5e-5)


def test_quantisation_is_deterministic_and_exact():
    cfg, params, int_params = _model("random", "pre")
    again = integer.quantize_params(cfg, params)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(int_params), leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert again.spec == int_params.spec and hash(again.spec) == hash(int_params.spec)
    # round(x * 2**k) and round(x * C * 2**(k - c)) against exact rationals.
    x = np.array([0.1, -0.37, 1e-30, 3.0, -2.5 / 1024], np.float32)
    got = integer._to_fixed(x, 10, (3 << 26, 27))  # C * 2**-c = 1.5
    want = [math.floor(fractions.Fraction(float(v)) * 1536 + fractions.Fraction(1, 2)) for v in x]
    assert got.tolist() == want
