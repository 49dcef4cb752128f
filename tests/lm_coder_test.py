import dataclasses

import jax
import numpy as np
import pytest

from configs import default
from models import coding_model, integer, lm_coder, pretrained, transformer
from tests import coder_helpers
from tests import hf_fixtures as fixtures


def _net(model_cfg, params, portable=False):
    """(net, params) of our float model or, `portable`, its integer twin."""
    if portable:
        net = coding_model.IntegerTransformer(model_cfg)
        return net, integer.quantize_params(model_cfg, params)
    return coding_model.FloatTransformer(model_cfg), params


def _coder(vocab_size, lanes=3, chunk=24, **model):
    config = default.get_config("size=test")
    model_cfg = transformer.TransformerConfig.from_config(config.model, vocab_size)
    model_cfg = dataclasses.replace(model_cfg, context_length=32, **model)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    return lm_coder.LMCoder(
        *_net(model_cfg, params), lm_coder.CoderShape(lanes, chunk, attention_blocks=3)
    )


@pytest.mark.parametrize(
    "vocab_size,model",
    [(256, {}), (256, {"dtype": "bfloat16", "norm": "pre"}), (40_000, {})],
)
def test_round_trip(vocab_size, model):
    coder = _coder(vocab_size, **model)
    assert coder.factorized  # bytes as two nibbles, 40,000 tokens as two halves
    assert coder.shape.low_bits == (4 if vocab_size == 256 else 8)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab_size, (3, 24))
    lengths = np.array([24, 7, 0])
    payloads, bits, table_bits, escapes = coder.encode_group(tokens, lengths)
    np.testing.assert_array_equal(escapes, 0)  # no top-k: nothing escapes
    decoded, errors = coder.decode_group(payloads[:2], lengths)
    np.testing.assert_array_equal(errors[:2], 0)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(decoded[i, :n], tokens[i, :n])
    # A near-uniform model: about log2(vocab) bits a token, and the payload close to that.
    assert abs(bits[0] / 24 - np.log2(vocab_size)) < 1.5
    assert 8 * len(payloads[0]) <= 1.01 * bits[0] + 64
    assert 8 * len(payloads[0]) <= table_bits[0] + 8  # the range coder: under a byte more


def test_same_executable_both_ways():
    coder = _coder(256)
    tokens = np.random.default_rng(1).integers(0, 256, (3, 24))
    lengths = np.array([24, 24, 3])
    payloads = coder.encode_group(tokens, lengths).payloads
    programs = (lm_coder._start_jit, lm_coder._block_jit)
    compiled = [f._cache_size() for f in programs]
    coder.decode_group(payloads, lengths)
    # The decoder ran the encoder's compiled programs: nothing new was compiled.
    assert [f._cache_size() for f in programs] == compiled


def test_blocks_past_every_chunk_are_skipped_exactly():
    coder = _coder(256)  # 24 tokens in 3 blocks of 8
    assert coder.blocks() == [(0, 8), (8, 16), (16, 24)]
    tokens = np.random.default_rng(5).integers(0, 256, (3, 24))
    short = coder.encode_group(tokens, np.array([5, 3, 0]))  # runs the first block only
    full = coder.encode_group(tokens, np.array([5, 3, 24]))
    assert short.payloads[:2] == full.payloads[:2]
    decoded, errors = coder.decode_group(short.payloads[:2], np.array([5, 3, 0]))
    np.testing.assert_array_equal(errors, 0)
    np.testing.assert_array_equal(decoded[0, :5], tokens[0, :5])


def test_corrupted_payloads_never_decode_to_the_input():
    coder = _coder(256)
    tokens = np.random.default_rng(2).integers(0, 256, (3, 24))
    lengths = np.array([24, 24, 24])
    payloads = coder.encode_group(tokens, lengths).payloads
    flipped = bytearray(payloads[1])
    flipped[7] ^= 0x01
    damaged = [payloads[0], bytes(flipped), payloads[2][:-2]]
    decoded, errors = coder.decode_group(damaged, lengths)
    assert errors[0] == 0
    np.testing.assert_array_equal(decoded[0], tokens[0])
    for i in (1, 2):  # flagged, or decoded to other tokens: the container's checksums catch it
        assert errors[i] != 0 or not np.array_equal(decoded[i], tokens[i])
    _, errors = coder.decode_group([payloads[0] + b"\0", payloads[1] + b"\x17"], lengths)
    assert errors[0] != 0 and errors[1] != 0  # zero padding and trailing garbage


def test_chunk_api_groups_any_number_of_chunks():
    coder = _coder(256)
    rng = np.random.default_rng(3)
    chunks = [rng.integers(0, 256, n) for n in (24, 5, 0, 24, 1, 17, 24)]  # 3 groups of 3 lanes
    coded = list(coder.encode_chunks(chunks, verify=True))
    assert [c.num_tokens for c in coded] == [len(c) for c in chunks]
    decoded = list(coder.decode_chunks((c.payload, c.num_tokens, None) for c in coded))
    for got, want in zip(decoded, chunks, strict=True):
        np.testing.assert_array_equal(got, want)
    streams = [(c.payload, c.num_tokens, None) for c in coded]
    streams[4] = (coded[4].payload + b"\0", coded[4].num_tokens, None)  # zero padded: flagged
    with pytest.raises(ValueError, match="chunk 4 failed to decode"):
        list(coder.decode_chunks(streams))


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="context"):
        _coder(256, chunk=33)
    coder = _coder(256)
    with pytest.raises(ValueError, match="lengths"):
        coder.encode_group(np.zeros((3, 24)), np.array([25, 0, 0]))
    with pytest.raises(ValueError, match="token ids"):
        coder.encode_group(np.full((3, 24), 256), np.array([24, 0, 0]))
    with pytest.raises(ValueError, match="exceeds chunk_size"):
        list(coder.encode_chunks([np.zeros(25, np.int32)]))


def test_known_lanes_are_read_not_decoded_and_leave_the_others_exact():
    # A chunk stored raw is fed to the model from its known tokens: the other lanes of its group
    # see exactly what the encoder fed them, so they decode as they were encoded.
    coder = _coder(256)
    rng = np.random.default_rng(4)
    chunks = [rng.integers(0, 256, 24) for _ in range(3)]
    coded = list(coder.encode_chunks(chunks))
    items = [(c.payload, c.num_tokens, None) for c in coded]
    items[1] = (b"", len(chunks[1]), chunks[1])  # lane 1 known, its payload dropped
    decoded = list(coder.decode_chunks(items))
    for got, want in zip(decoded, chunks, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("low_bits", [0, 4])
def test_bytes_as_one_table_or_two_nibbles(low_bits):
    config = default.get_config("size=test")
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    model_cfg = dataclasses.replace(model_cfg, context_length=32)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    # The lanes and blocks of `_coder`'s and the empty-payload test's coders: their programs.
    shape = lm_coder.CoderShape(3, 24, attention_blocks=3, low_bits=low_bits)
    coder = lm_coder.LMCoder(*_net(model_cfg, params), shape)
    assert coder.steps_per_token == (2 if low_bits else 1)
    chunks = [np.random.default_rng(5).integers(0, 256, 24) for _ in range(2)]
    coded = list(coder.encode_chunks(chunks, verify=True))
    assert len(coded) == 2


def test_portable_path_round_trips_and_ignores_the_group_layout():
    config = default.get_config("size=test")
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    model_cfg = dataclasses.replace(model_cfg, context_length=32)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    rng = np.random.default_rng(6)
    chunks = [rng.integers(0, 256, n) for n in (24, 9, 24)]
    payloads = {}
    for lanes, blocks in ((3, 3), (1, 1)):
        shape = lm_coder.CoderShape(lanes, 24, attention_blocks=blocks)
        coder = lm_coder.LMCoder(*_net(model_cfg, params, portable=True), shape)
        coded = list(coder.encode_chunks(chunks, verify=True))
        payloads[lanes] = [c.payload for c in coded]
    # Integer tables do not depend on the batch or the program: the same bytes every way.
    assert payloads[1] == payloads[3]
    with pytest.raises(ValueError, match="portable path codes one table"):
        lm_coder.LMCoder(*_net(model_cfg, params, True), lm_coder.CoderShape(1, 24, low_bits=4))


def test_auto_attention_blocks():
    # Byte chunks fill the coder: a block per 256 tokens; pretrained pieces vary: one per 128.
    ours = coding_model.FloatTransformer(transformer.TransformerConfig()).attention_blocks
    assert [ours(24), ours(256), ours(2048), ours(8192)] == [1, 1, 8, 8]
    theirs = pretrained.PretrainedNet(pretrained.config_from_hf(fixtures.llama_config()))
    auto = theirs.attention_blocks
    assert [auto(48), auto(257), auto(2049), auto(4097)] == [1, 2, 16, 16]


@pytest.mark.parametrize(
    "shape, portable", [({"low_bits": 4}, False), ({"low_bits": 0}, False), ({"low_bits": 0}, True)]
)
def test_empty_payloads_decode_to_zeros_without_the_model(monkeypatch, shape, portable):
    # An empty stream is the value 0, the first symbol of any table: every step decodes token 0,
    # so lanes with nothing to read cost no model work (a forged group of them none at all).
    config = default.get_config("size=test")
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    model_cfg = dataclasses.replace(model_cfg, context_length=32)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    coder = lm_coder.LMCoder(
        *_net(model_cfg, params, portable), lm_coder.CoderShape(3, 24, attention_blocks=3, **shape)
    )
    tokens = np.zeros((3, 24), np.int32)
    tokens[1, :5] = np.random.default_rng(7).integers(1, 256, 5)
    lengths = np.array([24, 5, 24])
    payloads = coder.encode_group(tokens, lengths).payloads
    assert payloads[0] == payloads[2] == b"" and payloads[1]
    # The model itself decodes empty streams to zeros, cleanly.
    data = np.zeros((3, coder.capacity_bytes), np.uint8)
    none = np.zeros(3, np.int32)
    run = coder._run(np.zeros_like(tokens), lengths, data, none, np.zeros(3, bool))
    symbols, errors = run[0], run[4]
    np.testing.assert_array_equal(symbols, 0)
    np.testing.assert_array_equal(errors, 0)
    blocks = coder_helpers.count_calls(monkeypatch, "_block_jit")
    starts = coder_helpers.count_calls(monkeypatch, "_start_jit")
    decoded, errors = coder.decode_group(payloads, lengths)
    np.testing.assert_array_equal(decoded, tokens)
    np.testing.assert_array_equal(errors, 0)
    assert blocks == [0]  # lane 1's 5 tokens: the first block of 8 only
    decoded, errors = coder.decode_group([b"", b""], np.array([24, 17, 0]))
    np.testing.assert_array_equal(decoded, 0)
    np.testing.assert_array_equal(errors, 0)
    assert blocks == [0] and len(starts) == 1  # nothing to decode: the model never ran


@pytest.mark.parametrize(
    "chunk, shape, portable",
    [
        (1, {}, True),
        (256, {}, True),
        (256, {}, False),
        (256, {"kv_dtype": "bfloat16"}, False),
        (256, {"kv_dtype": "int8"}, False),
    ],
)
def test_memory_estimate_covers_what_xla_allocates(chunk, shape, portable):
    # The decoder refuses a stream whose lanes its device cannot hold by this estimate: it must
    # not fall short of the real allocation (the KV cache is live twice across a block call,
    # attention widens it), nor overshoot it much.
    config = default.get_config("size=test")
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    model_cfg = dataclasses.replace(model_cfg, context_length=256)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    blocks = coding_model.FloatTransformer(model_cfg).attention_blocks(chunk)
    net, params = _net(model_cfg, params, portable)
    coder = lm_coder.LMCoder(net, params, lm_coder.CoderShape(64, chunk, 16, blocks, **shape))
    actual = coder_helpers.xla_bytes(coder)
    assert actual <= coder.memory_bytes() <= 2.5 * actual
