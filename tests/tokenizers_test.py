import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runs
import train
from configs import default
from data import corpus, tokenizers
from training import checkpoints


@pytest.fixture(scope="module")
def bpe():
    return tokenizers.BPETokenizer.train(corpus.pydocs_bytes()[:200_000], 512)


def test_byte_tokenizer_round_trip_all_values():
    tok = tokenizers.get_tokenizer("bytes")
    data = bytes(range(256)) * 3
    assert tok.decode(tok.encode(data)) == data


def test_bpe_compresses_text_and_has_exact_size(bpe):
    text = corpus.pydocs_bytes()[200_000:210_000]
    ids = bpe.encode(text)
    assert bpe.vocab_size == 512 and ids.dtype == np.int32
    assert ids.max() < 512
    assert len(text) / len(ids) > 1.5  # merges learnt on the same kind of text
    assert bpe.token_bytes[ids].sum() == len(text)  # rates per original byte add up


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_bpe_round_trip_arbitrary_bytes(bpe, data):
    assert bpe.decode(bpe.encode(data)) == data


def test_bpe_round_trip_invalid_utf8_and_every_byte(bpe):
    data = b"\xff\xfe\x80 not utf-8 \xc3\x28 " + bytes(range(256)) + b"  two  spaces\n\n\x00"
    assert bpe.decode(bpe.encode(data)) == data
    big = corpus.pydocs_bytes()[:300_000]  # several encode pieces
    assert bpe.decode(bpe.encode(big)) == big


def test_get_tokenizer_caches_and_checks(tmp_path):
    path = tmp_path / "tokenizer.json"
    data = corpus.pydocs_bytes()[:50_000]
    a = tokenizers.get_tokenizer("bpe:300", train_data=data, cache_path=path)
    assert path.exists()
    b = tokenizers.get_tokenizer("bpe:300", cache_path=path)
    np.testing.assert_array_equal(a.encode(data[:5000]), b.encode(data[:5000]))
    with pytest.raises(ValueError, match="not bpe:400"):
        tokenizers.get_tokenizer("bpe:400", cache_path=path)
    with pytest.raises(ValueError, match="not trained"):
        tokenizers.get_tokenizer("bpe:300", cache_path=tmp_path / "none.json")
    with pytest.raises(ValueError, match="Unknown tokenizer"):
        tokenizers.get_tokenizer("wordpiece")
    with pytest.raises(ValueError, match=r"\[256, 65536\]"):
        tokenizers.get_tokenizer("bpe:100", train_data=data)


def test_train_with_bpe_reports_per_byte_and_saves_tokenizer(tmp_path):
    config = default.get_config("size=test,tokenizer=bpe:384")
    config.train.steps = 20
    config.train.eval_every = 20
    config.train.eval_max_bytes = 8192
    config.train.progress = False
    metrics = train.train(config, tmp_path)
    assert (tmp_path / runs.TOKENIZER_FILE).exists()
    # Larger embedding and output layer: 2 * 384 * 32 + 384 for the 41,792-param byte model's
    # 2 * 256 * 32 + 256.
    assert metrics["num_params"] == 41_792 + 2 * 128 * 32 + 128
    assert 0.5 < metrics["eval_bits_per_byte"] < 8.5
    model_cfg, params, step = checkpoints.restore_params(tmp_path)
    assert model_cfg.vocab_size == 384 and step == 20
