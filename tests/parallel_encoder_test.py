"""The portable path's parallel encoder: the step encoder's streams, byte for byte."""

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from models import coding_model, integer, lm_coder, transformer

CHUNK = 32


@functools.cache
def _model():
    """A test-preset model with NumPy-drawn weights (peaked, uneven tables), integer params."""
    config = default.get_config("size=test")
    cfg = transformer.TransformerConfig.from_config(config.model, vocab_size=256)
    cfg = dataclasses.replace(cfg, context_length=64)
    shapes = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(0)
    values = [rng.normal(0, 0.2, leaf.shape).astype(np.float32) for leaf in leaves]
    params = jax.tree_util.tree_unflatten(tree, values)
    return cfg, integer.quantize_params(cfg, params)


def _coder(lanes=4, chunk=CHUNK, blocks=4):
    cfg, params = _model()
    shape = lm_coder.CoderShape(lanes, chunk, attention_blocks=blocks)
    return lm_coder.LMCoder(coding_model.IntegerTransformer(cfg), params, shape)


def _inputs(kind: str, size: int) -> bytes:
    rng = np.random.default_rng(len(kind) + size)
    if kind == "text":
        text = pathlib.Path(lm_coder.__file__).read_bytes()
        return (text * (1 + size // len(text)))[:size]
    if kind == "image":  # rows of a smooth gradient with a little noise, as 8-bit pixels
        x = np.arange(size)
        return (
            np.clip(x % 24 * 9 + x // 24 + rng.integers(-3, 4, size), 0, 255)
            .astype(np.uint8)
            .tobytes()
        )
    if kind == "audio":  # 8-bit PCM: a tone and some noise around 128
        t = np.arange(size)
        wave = 128 + 90 * np.sin(2 * np.pi * t / 17.3) + rng.normal(0, 4, size)
        return np.clip(np.round(wave), 0, 255).astype(np.uint8).tobytes()
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def _chunks(data: bytes, chunk: int = CHUNK) -> list[bytes]:
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def _both(coder, chunks):
    """(parallel, step) payloads and the parallel encoder's `Coded`s over every group."""
    parallel, step, coded = [], [], []
    for group in lm_coder.group_chunks(chunks, coder.shape.lanes, coder.shape.chunk_tokens):
        fast = coder.encode_group(group.tokens, group.lengths)
        slow = coder.encode_group(group.tokens, group.lengths, parallel=False)
        parallel += fast.payloads[: group.count]
        step += slow.payloads[: group.count]
        np.testing.assert_allclose(fast.bits, slow.bits, rtol=1e-5)
        np.testing.assert_array_equal(fast.table_bits, slow.table_bits)
        np.testing.assert_array_equal(fast.escapes, 0)
    coded = list(coder.encode_chunks(chunks))
    assert [c.payload for c in coded] == parallel  # encode_chunks takes the parallel route
    return parallel, step


def _decodes(coder, chunks, payloads):
    streams = [(p, len(c), None) for p, c in zip(payloads, chunks, strict=True)]
    decoded = list(coder.decode_chunks(streams))
    assert [bytes(d.astype(np.uint8)) for d in decoded] == list(chunks)


@pytest.mark.parametrize("kind", ["text", "image", "audio", "random"])
def test_parallel_streams_equal_the_step_encoders(kind):
    coder = _coder()
    chunks = _chunks(_inputs(kind, 5 * CHUNK + 11))  # two groups, the second part padding
    parallel, step = _both(coder, chunks)
    assert parallel == step
    assert all(parallel)  # something was coded
    _decodes(coder, chunks, parallel)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1])
def test_chunk_length_edges(size):
    coder = _coder()
    chunks = _chunks(_inputs("text", size))
    parallel, step = _both(coder, chunks)
    assert parallel == step
    _decodes(coder, chunks, parallel)


def test_group_of_every_length_and_rows_split_by_memory(monkeypatch):
    # A group holding each length 0..chunk, its rows cut into calls of 3 (the last padded).
    # One attention block: the parallel pass runs the whole chunk whatever the blocks (the
    # longest length is the chunk's), and the step encoder's stream does not depend on them
    # (lm_coder_test), so it compiles one block program at these lanes instead of four.
    coder = _coder(lanes=CHUNK + 1, blocks=1)
    data = _inputs("audio", CHUNK * (CHUNK + 1))
    tokens = np.frombuffer(data, np.uint8).reshape(CHUNK + 1, CHUNK).astype(np.int32)
    lengths = np.arange(CHUNK + 1, dtype=np.int32)[::-1].copy()
    step = coder.encode_group(tokens, lengths, parallel=False)
    monkeypatch.setattr(lm_coder, "CPU_PARALLEL_BYTES", 3 * coder.net.parallel_row_bytes(CHUNK))
    if jax.local_devices()[0].platform == "cpu":
        assert coder.parallel_rows(CHUNK) == 3
    assert coder.encode_group(tokens, lengths).payloads == step.payloads


def test_short_groups_run_a_shorter_pass_with_the_same_bytes():
    # The longest chunk of 9 tokens runs 16 positions (two blocks of 8), not the chunk's 32.
    coder = _coder()
    tokens = np.frombuffer(_inputs("text", 4 * CHUNK), np.uint8).reshape(4, CHUNK)
    lengths = np.array([9, 3, 0, 1])
    before = lm_coder._parallel_intervals_jit._cache_size()
    fast = coder.encode_group(tokens, lengths)
    assert lm_coder._parallel_intervals_jit._cache_size() <= before + 1
    assert fast.payloads == coder.encode_group(tokens, lengths, parallel=False).payloads


def test_float_path_keeps_its_step_encoder():
    cfg, _ = _model()
    params = transformer.init_params(cfg, jax.random.key(0))
    net = coding_model.FloatTransformer(cfg)
    coder = lm_coder.LMCoder(net, params, lm_coder.CoderShape(2, CHUNK, attention_blocks=4))
    with pytest.raises(ValueError, match="only the portable path"):
        coder.encode_group(np.zeros((2, CHUNK)), np.array([3, 0]), parallel=True)


def test_parallel_row_estimate_covers_what_xla_allocates():
    # Rows per call come from this estimate: it must not fall short of XLA's allocation.
    coder = _coder(lanes=8, chunk=64, blocks=1)
    rows = jax.ShapeDtypeStruct((8, 64), jnp.int32)
    program = (
        lm_coder._parallel_intervals_jit.lower(
            coder.params,
            rows,
            jax.ShapeDtypeStruct((8,), jnp.int32),
            net=coder.net,
            spec=coder.spec,
        )
        .compile()
        .memory_analysis()
    )
    params = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(coder.params))
    used = program.argument_size_in_bytes + program.output_size_in_bytes
    actual = used + program.temp_size_in_bytes - params
    assert actual <= 8 * coder.net.parallel_row_bytes(64) <= 4 * actual
