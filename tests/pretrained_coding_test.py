"""Pretrained checkpoints as compressors: LMCoder with top-k, eval_compress's hf:PATH and
compress.py --model=hf:PATH, on tiny checkpoints the tests write (no network)."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import compressors
from analysis import tables
from coding import container
from compressors import evaluation, fingerprints, lm_stream, model_names, pretrained_model
from configs import eval as eval_config
from data import pretrained_tokenizers as tokenizers
from models import lm_coder, pretrained
from tests import hf_fixtures as fixtures
from tests import pretrained_test

TEXT = fixtures.corpus_text(1200).encode()
FULL_WIDTH = "ＡＢＣ１２３ full width".encode()  # NFKC folds it: SentencePiece cannot reproduce it
RANDOM = np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    config = fixtures.gpt2_config(n_positions=32)
    fixtures.write_model(path, config, fixtures.random_weights(config, seed=1))
    fixtures.write_bpe_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A GQA Llama with a SentencePiece tokenizer (NFKC, byte fallback), BOS from its config."""
    path = tmp_path_factory.mktemp("llama")
    config = fixtures.llama_config(vocab_size=512, max_position_embeddings=48)
    weights = fixtures.random_weights(config, seed=2)
    fixtures.write_model(path, config, weights)
    fixtures.write_sentencepiece(path)
    return path


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("top_k", [0, 8])
def test_lm_coder_codes_a_pretrained_model_exactly(gpt2_dir, top_k):
    model, params = pretrained.load(gpt2_dir, start_token=0)
    shape = lm_coder.CoderShape(lanes=3, chunk_tokens=32, attention_blocks=2, top_k=top_k)
    coder = lm_coder.LMCoder(model, params, shape)
    assert coder.steps_per_token == (4 if top_k else 2)  # rank + 3 digits; else two halves
    tokens = np.random.default_rng(3).integers(0, 320, (3, 32))
    lengths = np.array([32, 9, 0])
    code = coder.encode_group(tokens, lengths)
    decoded, errors = coder.decode_group(code.payloads[:2], lengths)
    np.testing.assert_array_equal(errors, 0)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(decoded[i, :n], tokens[i, :n])
    # The model's bits agree with its parallel pass, and the payload with its tables.
    log_probs = np.asarray(model.apply(params, np.asarray(tokens, np.int32)), np.float64)
    nll = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0] / np.log(2)
    np.testing.assert_allclose(code.bits[:2], [nll[0].sum(), nll[1, :9].sum()], rtol=1e-5)
    assert 8 * len(code.payloads[0]) <= code.table_bits[0] + 8
    if top_k:  # a random model misses its top 8 of 320 often: escapes are used and counted
        escapes = tokenizers_free_escapes(log_probs, tokens, lengths, top_k)
        assert 0 < code.escapes[0] <= 32 and abs(int(code.escapes[0]) - escapes[0]) <= 1
        assert code.table_bits[0] > code.bits[0]  # an escape costs more than the token's -log2 p
    else:
        np.testing.assert_array_equal(code.escapes, 0)
        assert code.table_bits[0] == pytest.approx(code.bits[0], rel=0.01)


def tokenizers_free_escapes(log_probs, tokens, lengths, k):
    """Tokens outside the top k of the parallel pass's probabilities, per lane."""
    from coding import topk

    escaped = topk.is_escape_np(np.exp(log_probs).astype(np.float32), tokens, k)
    return [int(escaped[i, :n].sum()) for i, n in enumerate(lengths)]


def test_rate_passes_against_an_independent_reference(llama_dir):
    hf = pretrained_model.PretrainedCompressor(llama_dir, top_k=10, rows=4, lanes=4, max_tokens=24)
    assert hf.tokenizer.bos_token_id == 1 and hf.coder(24).shape.attention_blocks == 1
    chunks = _chunks(TEXT[:400], 100) + [FULL_WIDTH, RANDOM[:60]]
    stats = hf.rate(lambda: iter(chunks), 100, verify=True)
    # Log-loss: every piece after its own BOS, by the NumPy float64 Llama of pretrained_test.
    config = json.loads((llama_dir / "config.json").read_text())
    weights = {k: v.astype(np.float64) for k, v in fixtures.random_weights(config, 2).items()}
    expected = 0.0
    for chunk in chunks:
        for piece in hf.tokenize(chunk).pieces:
            log_probs = pretrained_test._reference(weights, config, piece[None], 1)[0]
            expected -= log_probs[np.arange(len(piece)), piece].sum() / np.log(2)
    assert stats["ideal_bits"] == pytest.approx(expected, rel=1e-4)
    # NFKC folds the full-width chunk, and this normaliser collapses the corpus's newlines and
    # indents too (a real Llama's tokenizer.model keeps them): such chunks become byte tokens.
    assert hf.tokenize(FULL_WIDTH).mode == tokenizers.MODE_BYTE_TOKENS
    assert hf.tokenize(b"Hello world").mode == tokenizers.MODE_UTF8
    assert stats["chunks"] == 6 and stats["byte_tokens_chunks"] >= 1
    assert stats["byte_tokens_chunks"] + stats["utf8_chunks"] + stats["latin1_chunks"] == 6
    assert stats["split_chunks"] >= 4 and stats["pieces"] > stats["chunks"]
    assert stats["tokens"] == sum(len(p) for c in chunks for p in hf.tokenize(c).pieces)
    assert 0 < stats["escapes"] <= stats["tokens"]
    assert 8 * stats["coded_bytes"] >= stats["table_bits"] - 8 * stats["pieces"]


def test_eval_compress_rates_an_hf_model_with_and_without_top_k(gpt2_dir, tmp_path, capsys):
    config = eval_config.get_config()
    config.compressors = f"gzip,hf:{gpt2_dir}"
    config.update(num_chunks=4, chunk_size=128, progress=False, workers=1)
    config.lm.update(lanes=4, verify=True)
    config.hf.top_k = 8
    records = evaluation.evaluate(config, tmp_path)
    (hf,) = [r for r in records if r["compressor"].startswith("hf:")]
    assert hf["top_k"] == 8 and hf["model_type"] == "gpt2" and hf["verified"]
    assert hf["num_params"] == pretrained_model.PretrainedCompressor(gpt2_dir).num_params
    assert hf["split_chunks"] == 4 and "were coded as consecutive pieces" in capsys.readouterr().err
    assert hf["raw_rate"] == hf["coded_bytes"] / hf["raw_bytes"]
    assert hf["adjusted_rate"] == (hf["coded_bytes"] + 2 * hf["num_params"]) / hf["raw_bytes"]
    assert 0 < hf["escapes"] <= hf["tokens"] and hf["log_loss_rate"] > 0
    config.hf.top_k = 0  # the whole vocabulary: its own record; the top-8 one is kept
    config.lm.verify = False
    again = evaluation.evaluate(config, tmp_path)
    full = [r for r in again if r.get("top_k") == 0]
    assert len(full) == 1 and full[0]["escapes"] == 0
    assert full[0]["coded_bytes"] < hf["coded_bytes"]  # no escape costs
    saved = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r.get("top_k") for r in saved if r["compressor"].startswith("hf:")) == [0, 8]
    table = tables.format_table(saved)
    assert "top-8" in table and "full" in table and "escaped the top 8" in table


def test_compress_round_trips_text_bytes_and_unreproducible_chunks(llama_dir, tmp_path):
    src, packed, out = tmp_path / "in", tmp_path / "in.lmc", tmp_path / "out"
    data = TEXT[:300] + FULL_WIDTH + RANDOM[:100] + b"two  spaces" * 4
    src.write_bytes(data)
    spec = f"hf:{llama_dir}"
    summary = lm_stream.compress_file(spec, src, packed, lanes=4, chunk_size=40, top_k=5)
    lm_stream.decompress_file(spec, packed, out)
    assert out.read_bytes() == data
    assert summary["num_chunks"] == 12
    reader = container.ContainerReader(open(packed, "rb"))
    info = container.StreamInfo.unpack(reader.header.info)
    assert info.coder["model"] == "hf" and info.coder["top_k"] == 5
    assert info.coder["chunk_tokens"] == 41 and info.coder["path"] == "float"
    chunks = [c for g in reader.groups() for c in g.chunks]
    assert {tokenizers.MODE_BYTE_TOKENS, tokenizers.MODE_UTF8} <= {c.mode for c in chunks}
    assert any(not c.raw for c in chunks)  # some chunks the random model did shorten
    # bfloat16: recorded in the stream, which decompression follows.
    packed16 = tmp_path / "in16.lmc"
    lm_stream.compress_file(spec, src, packed16, lanes=4, chunk_size=40, dtype="bfloat16")
    lm_stream.decompress_file(spec, packed16, out, force=True)
    assert out.read_bytes() == data
    info = container.StreamInfo.unpack(container.ContainerReader(open(packed16, "rb")).header.info)
    assert info.coder["dtype"] == "bfloat16" and info.coder["top_k"] == 0


def test_a_tokenizer_without_byte_tokens_stores_what_it_cannot_read(tmp_path):
    model_dir = tmp_path / "model"
    config = fixtures.llama_config(vocab_size=300, max_position_embeddings=40)
    fixtures.write_model(model_dir, config, fixtures.random_weights(config, seed=4))
    fixtures.write_sentencepiece(model_dir, vocab_size=300, byte_fallback=False)
    src, packed, out = tmp_path / "in", tmp_path / "in.lmc", tmp_path / "out"
    data = b"Hello world, hello world. " * 3 + "price: 5 €".encode() + RANDOM[:30]
    src.write_bytes(data)
    summary = lm_stream.compress_file(f"hf:{model_dir}", src, packed, lanes=2, chunk_size=32)
    lm_stream.decompress_file(f"hf:{model_dir}", packed, out)
    assert out.read_bytes() == data and summary["raw_chunks"] >= 1


def test_wrong_model_and_bad_requests_are_one_clear_line(gpt2_dir, llama_dir, tmp_path):
    src, packed = tmp_path / "in", tmp_path / "in.lmc"
    src.write_bytes(TEXT[:100])
    lm_stream.compress_file(f"hf:{gpt2_dir}", src, packed, lanes=2)
    with pytest.raises(container.FormatError, match="different model"):
        lm_stream.decompress_file(f"hf:{llama_dir}", packed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="float path only"):
        lm_stream.compress_file(f"hf:{gpt2_dir}", src, tmp_path / "p", portable=True)
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        lm_stream.compress_file(f"hf:{gpt2_dir}", src, tmp_path / "p", chunk_size=64)
    for args, message in [
        ([f"--model=hf:{tmp_path / 'none'}"], "no model directory"),
        ([f"--model={gpt2_dir}"], "not a training run"),
        ([f"--model=hf:{gpt2_dir}", f"--workdir={tmp_path}"], "--workdir is now --model=RUN_DIR"),
    ]:
        result = subprocess.run(
            [sys.executable, "compress.py", "compress", *args, str(src), str(tmp_path / "x")],
            capture_output=True,
            text=True,
            cwd=pretrained_test.ROOT,
        )
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2


def test_eval_compress_checks_hf_directories_before_any_work(gpt2_dir, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((gpt2_dir / "config.json").read_text())
    (incomplete / "model.safetensors").write_bytes((gpt2_dir / "model.safetensors").read_bytes())
    config = eval_config.get_config()
    config.compressors = f"gzip,hf:{incomplete}"
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        evaluation.evaluate(config, tmp_path / "results")
    assert not (tmp_path / "results").exists()  # gzip did not run either
    unsupported = tmp_path / "bert"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "bert"}))
    config.compressors = f"hf:{unsupported}"
    with pytest.raises(ValueError, match="llama"):
        evaluation.evaluate(config, tmp_path / "results")


def test_hf_fingerprint_is_the_streams(gpt2_dir):
    """Computed independently: compress.py's streams must keep the fingerprints they have."""
    digest = hashlib.sha256((gpt2_dir / "config.json").read_bytes())
    digest.update(hashlib.sha256((gpt2_dir / "tokenizer.json").read_bytes()).hexdigest().encode())
    digest.update((gpt2_dir / "model.safetensors").read_bytes())
    assert fingerprints.hf_fingerprint(gpt2_dir) == digest.hexdigest()
    assert model_names.load(f"hf:{gpt2_dir}").fingerprint == digest.hexdigest()


def test_eval_compress_rates_an_hf_model_again_when_its_weights_change(
    gpt2_dir, tmp_path, capsys, monkeypatch
):
    model_dir = tmp_path / "model"
    shutil.copytree(gpt2_dir, model_dir)
    config = eval_config.get_config()
    config.compressors = f"hf:{model_dir}"
    config.update(num_chunks=2, chunk_size=128, progress=False, workers=1)
    config.lm.coded = False
    (first,) = evaluation.evaluate(config, tmp_path / "results")
    assert first["model_sha256"] == fingerprints.hf_fingerprint(model_dir)
    with monkeypatch.context() as patch:  # reused without loading the model
        patch.setitem(compressors.COMPRESSORS, "hf", lambda *a, **k: pytest.fail())
        assert evaluation.evaluate(config, tmp_path / "results") == [first]
    assert "Reused 1 record of" in capsys.readouterr().err
    model_config = json.loads((model_dir / "config.json").read_text())
    fixtures.write_model(model_dir, model_config, fixtures.random_weights(model_config, seed=5))
    (again,) = evaluation.evaluate(config, tmp_path / "results")
    assert again["model_sha256"] != first["model_sha256"]
    assert again["log_loss_bytes"] != first["log_loss_bytes"]
    assert "differs in model_sha256" in capsys.readouterr().err
