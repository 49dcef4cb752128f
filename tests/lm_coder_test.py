import dataclasses

import jax
import numpy as np
import pytest

from configs import default
from models import lm_coder, transformer


def _coder(vocab_size, lanes=3, chunk=24, **model):
    config = default.get_config("size=test")
    cfg = transformer.TransformerConfig.from_config(config.model, vocab_size)
    cfg = dataclasses.replace(cfg, context_length=32, **model)
    params = transformer.init_params(cfg, jax.random.key(0))
    return lm_coder.LMCoder(cfg, params, lm_coder.CoderShape(lanes, chunk, attention_blocks=3))


@pytest.mark.parametrize(
    "vocab_size,model",
    [(256, {}), (256, {"dtype": "bfloat16", "norm": "pre"}), (40_000, {})],
)
def test_round_trip(vocab_size, model):
    coder = _coder(vocab_size, **model)
    assert coder.factorized == (vocab_size > 32_768)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab_size, (3, 24))
    lengths = np.array([24, 7, 0])
    words, num_words, bits = coder.encode(tokens, lengths)
    decoded, errors = coder.decode(words, num_words, lengths)
    np.testing.assert_array_equal(errors[:2], 0)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(decoded[i, :n], tokens[i, :n])
    # A near-uniform model: about log2(vocab) bits a token, and the words close to that.
    assert abs(bits[0] / 24 - np.log2(vocab_size)) < 1.5
    assert 16 * num_words[0] <= 1.01 * bits[0] + 64


def test_same_executable_both_ways():
    coder = _coder(256)
    tokens = np.random.default_rng(1).integers(0, 256, (3, 24))
    lengths = np.array([24, 24, 3])
    words, num_words, _ = coder.encode(tokens, lengths)
    compiled = lm_coder._scan_jit._cache_size()
    coder.decode(words, num_words, lengths)
    # The decoder ran the encoder's compiled program: nothing new was compiled.
    assert lm_coder._scan_jit._cache_size() == compiled


def test_corrupted_words_are_flagged():
    coder = _coder(256)
    tokens = np.random.default_rng(2).integers(0, 256, (3, 24))
    lengths = np.array([24, 24, 24])
    words, num_words, _ = coder.encode(tokens, lengths)
    words = words.copy()
    words[1, 3] ^= 0x0100
    _, errors = coder.decode(words, num_words - np.array([0, 0, 1]), lengths)
    assert errors[0] == 0 and errors[1] != 0 and errors[2] != 0


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="context"):
        _coder(256, chunk=33)
    coder = _coder(256)
    with pytest.raises(ValueError, match="lengths"):
        coder.encode(np.zeros((3, 24)), np.array([25, 0, 0]))
    with pytest.raises(ValueError, match="token ids"):
        coder.encode(np.full((3, 24), 256), np.array([24, 0, 0]))
