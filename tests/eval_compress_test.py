"""eval_compress.py and its evaluator (compressors/evaluation.py) end to end: rates against
direct computations, devices, 7-bit, records reused or rated again, CLI, errors."""

import csv
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import compressors
import train
from analysis import tables
from compressors import evaluation, fingerprints, language_model, pretrained_model
from configs import default
from configs import eval as eval_config
from data import corpus, sources
from models import lm_coder, transformer
from tests import hf_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
CHUNK = 1024  # the test model's context; long enough that the 4-byte flush is < 1% of a chunk
TIMING = ("seconds", "mb_per_s", "log_loss_seconds", "coded_seconds", "created")
LM_OPTIONS = {"lm.lanes": 2, "lm.chunks_per_device": 2, "chunk_size": CHUNK}
if "attention_blocks" in {f.name for f in dataclasses.fields(lm_coder.CoderShape)}:
    LM_OPTIONS["lm.attention_blocks"] = 1  # one scan per group: the shortest compile


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = default.get_config("size=test")
    config.model.context_length = CHUNK
    config.train.batch_size = 2
    config.train.steps = 20
    config.train.checkpoint_every = 10  # steps 10 and 20: an older checkpoint to rate
    config.train.eval_every = 1000
    config.train.eval_max_bytes = CHUNK
    config.train.progress = False
    workdir = tmp_path_factory.mktemp("run")
    train.train(config, workdir)
    return str(workdir)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """4 full chunks of real text and a partial one."""
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_bytes(corpus.pydocs_bytes()[100_000 : 100_000 + 4 * CHUNK + 300])
    return path


def _config(**overrides):
    config = eval_config.get_config()
    config.update_from_flattened_dict({"progress": False, "workers": 2, **overrides})
    return config


def _by_key(records):
    return {(r["compressor"], r["chunking"]): r for r in records}


def test_rates_formula():
    rates = evaluation.rates(compressed_bytes=100, raw_bytes=1000, num_params=50)
    assert rates == {"raw_rate": 0.1, "adjusted_rate": (100 + 2 * 50) / 1000, "bits_per_byte": 0.8}
    with pytest.raises(ValueError, match="no bytes"):
        evaluation.rates(1, 0)


def test_chunked_and_unchunked_gzip_lzma_equal_direct_computation(tmp_path, text_file):
    config = _config(dataset=f"file:{text_file}", compressors="gzip,lzma", chunk_size=CHUNK)
    records = _by_key(evaluation.evaluate(config, tmp_path))
    data = text_file.read_bytes()
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    for name, compress in (("gzip", lambda b: gzip.compress(b, 9)), ("lzma", lzma.compress)):
        header = len(compress(b"\0"))
        expected = sum(len(compress(c)) for c in chunks) - header * (len(chunks) - 1)
        r = records[name, "chunked"]
        assert (r["compressed_bytes"], r["header_bytes"], r["num_chunks"]) == (
            expected,
            header,
            5,
        )
        assert r["raw_rate"] == expected / len(data) == r["adjusted_rate"]
        assert r["num_params"] == 0 and r["raw_bytes"] == len(data)
        assert records[name, "unchunked"]["compressed_bytes"] == len(compress(data))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == list(records.values())


def test_seven_bit_accounting_for_classical(tmp_path):
    data = "naïve café – 7-bit ".encode() * 300
    path = tmp_path / "utf8.txt"
    path.write_bytes(data)
    config = _config(
        dataset=f"file:{path}", compressors="gzip", chunking="chunked", seven_bit="ascii"
    )
    config.seven_bit_all = True
    (record,) = evaluation.evaluate(config, tmp_path)
    chunks = [data[i : i + 2048] for i in range(0, len(data), 2048)]
    masked = [compressors.mask_ascii(c) for c in chunks]
    missed = sum(m for _, m in masked)
    size = sum(len(gzip.compress(c, 9)) for c, _ in masked) - 21 * (len(chunks) - 1)
    assert record["missed_bits"] == missed == sum(b >= 128 for b in data) > 0
    assert record["compressed_bytes"] == pytest.approx(
        size * 8 * len(data) / (8 * len(data) - missed)
    )
    assert record["seven_bit"] == "ascii"


@pytest.fixture(scope="module", autouse=True)
def shared_models():
    """Builds each model compressor once per module, so its programs compile once."""
    built = {}
    constructor = compressors.COMPRESSORS["lm"]

    def cached(workdir, **kwargs):
        key = (workdir, *sorted(kwargs.items()))
        if key not in built:
            built[key] = constructor(workdir, **kwargs)
        return built[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(compressors.COMPRESSORS, "lm", cached)
        yield cached


@pytest.fixture(scope="module")
def lm_records(run, text_file, tmp_path_factory):
    config = _config(
        dataset=f"file:{text_file}", compressors=f"gzip,lm:{run}", **LM_OPTIONS, workers=1
    )
    config.lm.verify = True
    return evaluation.evaluate(config, tmp_path_factory.mktemp("eval"))


def _lm(run, shared_models):
    """The compressor lm_records used (same options, so the same compiled programs)."""
    return shared_models(
        run,
        step=None,
        chunks_per_device=2,
        lanes=2,
        dtype="",
        attention="",
        attention_blocks=LM_OPTIONS.get("lm.attention_blocks", 0),
        portable=False,
    )


def test_lm_coded_rate_within_one_percent_of_log_loss(lm_records):
    r = lm_records[-1]
    assert r["rate_from"] == "coded" and r["verified"] is True
    assert r["num_chunks"] == 5 and r["raw_bytes"] == 4 * CHUNK + 300
    # 4 bytes of final state per chunk: under 1% of the ~500 coded bytes of a full chunk.
    assert r["coded_bytes"] / r["num_chunks"] > 400
    assert abs(r["coded_bytes"] - r["log_loss_bytes"]) <= 0.01 * r["log_loss_bytes"]
    assert r["raw_rate"] == r["coded_bytes"] / r["raw_bytes"]
    assert abs(r["raw_rate"] - r["log_loss_rate"]) <= 0.01 * r["log_loss_rate"]


def test_lm_adjusted_rate_charges_two_bytes_per_parameter(run, lm_records):
    r = lm_records[-1]
    config = default.get_config("size=test")
    config.model.context_length = CHUNK
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    assert r["num_params"] == transformer.closed_form_num_params(model_cfg) == 41_792
    assert r["adjusted_rate"] == pytest.approx(
        (r["coded_bytes"] + 2 * r["num_params"]) / r["raw_bytes"]
    )
    assert r["bits_per_byte"] == pytest.approx(8 * r["raw_rate"])


_FOUR_DEVICES = """
import json, sys
import jax
from compressors import evaluation
from configs import eval as eval_config
assert jax.local_device_count() == 4, jax.devices()
config = eval_config.get_config()
config.update_from_flattened_dict(json.loads(sys.argv[1]))
print("RECORDS" + json.dumps(evaluation.evaluate(config, sys.argv[2])))
"""


def test_four_devices_match_one(run, text_file, lm_records, tmp_path):
    overrides = {"dataset": f"file:{text_file}", "compressors": f"lm:{run}", "progress": False}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    result = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES, json.dumps({**overrides, **LM_OPTIONS}), tmp_path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (four,) = json.loads(result.stdout.split("RECORDS", 1)[1])
    one = lm_records[-1]
    assert (one["devices"], four["devices"]) == (1, 4)
    assert (one["verified"], four["verified"]) == (True, False)
    for key in set(one) - {*TIMING, "devices", "verified"}:
        assert one[key] == four[key], key  # exactly: coded bytes and log-loss included
    # (The log-loss batch spans all 4 devices; the 3 coder groups went to devices 0, 1, 2.)


def test_verify_fails_on_a_corrupted_stream(run, shared_models, monkeypatch):
    lm = _lm(run, shared_models)
    chunks = list(sources.get_source("pydocs").chunks(3, CHUNK))
    coder = lm.coder(CHUNK, 0)
    real = coder.decode_group
    calls = []

    def corrupt(payloads, lengths):
        calls.append(len(calls))
        if len(calls) == 2:  # the second group (lanes=2): chunk 2 is its row 0
            payloads = [bytes([payloads[0][0] ^ 1]) + payloads[0][1:], *payloads[1:]]
        return real(payloads, lengths)

    monkeypatch.setattr(coder, "decode_group", corrupt)
    with pytest.raises(language_model.VerificationError, match="chunks 2 did not decode"):
        lm.code(chunks, CHUNK, verify=True)
    assert len(calls) == 2


def test_lm_shift_mode_scales_log_loss_by_8_over_7(run, shared_models, tmp_path):
    # `paper` shifts what is not text. A file's modality comes from its content
    # (data.sources.detect_modality), so this uses random bytes: a file of text is now masked
    # with `ascii` (next test), as the paper masks enwik9, where it used to be shifted.
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4 * CHUNK + 300))
    config = _config(
        dataset=f"file:{path}", compressors=f"lm:{run}", seven_bit="paper", **LM_OPTIONS
    )
    config.lm.coded = False
    (record,) = evaluation.evaluate(config, tmp_path)
    assert (record["modality"], record["seven_bit"]) == ("binary", "shift")
    assert record["missed_bits"] == record["raw_bytes"] and record["rate_from"] == "log_loss"
    lm = _lm(run, shared_models)
    chunks = sources.get_source(f"file:{path}").chunks(0, CHUNK)
    bits = lm.log_loss([compressors.shift_right(c)[0] for c in chunks], CHUNK).sum()
    assert record["compressed_bytes"] == pytest.approx(bits / 8 * 8 / 7, rel=1e-6)
    assert record["coded_bytes"] is None and record["verified"] is False


def test_lm_paper_mode_masks_a_text_file_to_ascii(run, shared_models, enwik5_path, tmp_path):
    config = _config(
        dataset=f"file:{enwik5_path}", compressors=f"lm:{run}", seven_bit="paper", **LM_OPTIONS
    )
    config.lm.coded = False
    (record,) = evaluation.evaluate(config, tmp_path)
    data = enwik5_path.read_bytes()
    assert (record["modality"], record["seven_bit"]) == ("text", "ascii")  # as enwik9's
    assert record["missed_bits"] == sum(b >= 128 for b in data) > 0
    lm = _lm(run, shared_models)
    chunks = sources.get_source(f"file:{enwik5_path}").chunks(0, CHUNK)
    bits = lm.log_loss([compressors.mask_ascii(c)[0] for c in chunks], CHUNK).sum()
    scale = 8 * len(data) / (8 * len(data) - record["missed_bits"])
    assert record["compressed_bytes"] == pytest.approx(bits / 8 * scale, rel=1e-6)


def test_chunk_longer_than_context_fails(run, text_file, tmp_path):
    config = _config(dataset=f"file:{text_file}", compressors=f"lm:{run}", chunk_size=2 * CHUNK)
    with pytest.raises(ValueError, match="context of 1024"):
        evaluation.evaluate(config, tmp_path)


def test_missing_dataset_and_bad_compressor_fail_clearly(tmp_path):
    with pytest.raises(sources.SourceError, match="No such file"):
        evaluation.evaluate(_config(dataset="file:/no/such/file"), tmp_path)
    with pytest.raises(ValueError, match="Unknown compressor 'zip'"):
        evaluation.evaluate(_config(compressors="gzip,zip"), tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "eval_compress.py", "--config=configs/eval.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_prints_the_table_and_writes_results(tmp_path):
    out = tmp_path / "out"
    result = _cli(
        "--config.dataset=images",
        "--config.compressors=gzip,png",
        "--config.progress=False",
        "--config.workers=1",
        f"--workdir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "raw %" in result.stdout and "bits/B" in result.stdout and "adj. %" in result.stdout
    assert " inf gzip" in result.stdout and "2048 png" in result.stdout
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    required = {"compressor", "dataset", "chunk_size", "num_chunks", "raw_bytes"}
    required |= {"compressed_bytes", "raw_rate", "adjusted_rate", "num_params", "seconds"}
    assert required <= set(rows[0])
    assert {r["num_chunks"] for r in rows} == {"144"} and len(rows) == 4


def test_results_merge_replaces_same_key(tmp_path):
    config = _config(dataset="images", compressors="gzip,png", num_chunks=8, chunking="chunked")
    evaluation.evaluate(config, tmp_path)
    config.compressors = "png,flac"
    evaluation.evaluate(config, tmp_path)
    config.num_chunks = 4  # another dataset size: a new row
    evaluation.evaluate(config, tmp_path)
    with open(tmp_path / "results.csv") as f:
        rows = [(r["compressor"], r["num_chunks"]) for r in csv.DictReader(f)]
    assert rows == [("gzip", "8"), ("png", "8"), ("flac", "8"), ("png", "4"), ("flac", "4")]
    table = tables.format_table(
        [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    )
    assert "2048 flac" in table and "images" in table


def test_non_byte_run_is_refused(run, tmp_path):
    config = json.loads((pathlib.Path(run) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tokenizer": "bpe:512"}))
    with pytest.raises(ValueError, match="byte-level runs"):
        language_model.LanguageModelCompressor(tmp_path)


def test_records_are_kept_skipped_and_redone_on_request(tmp_path, monkeypatch):
    config = _config(dataset="images", compressors="gzip,png", num_chunks=4, chunking="chunked")
    first = evaluation.evaluate(config, tmp_path)
    calls = []
    real = evaluation._evaluate_classical
    monkeypatch.setattr(
        evaluation, "_evaluate_classical", lambda c, s, n: calls.append(n) or real(c, s, n)
    )
    config.compressors = "gzip,png,flac"
    again = evaluation.evaluate(config, tmp_path)
    assert calls == [["flac"]]  # gzip and png were there already
    assert [r["compressor"] for r in again] == ["flac", "gzip", "png"] or {
        r["compressor"] for r in again
    } == {"gzip", "png", "flac"}
    assert {r["compressor"]: r for r in again}["gzip"] == first[0]
    config.overwrite = True
    evaluation.evaluate(config, tmp_path)
    assert calls[-1] == ["gzip", "png", "flac"]


def test_a_later_failure_keeps_the_finished_records(run, text_file, tmp_path, monkeypatch):
    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "_evaluate_lm", boom)
    config = _config(dataset=f"file:{text_file}", compressors=f"gzip,lm:{run}", **LM_OPTIONS)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(config, tmp_path)
    kept = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["compressor"] for r in kept} == {"gzip"}


def test_a_short_context_model_fails_before_any_work(run, text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "_evaluate_classical", lambda *a: pytest.fail("worked"))
    config = _config(dataset=f"file:{text_file}", compressors=f"gzip,lm:{run}", chunk_size=4096)
    with pytest.raises(ValueError, match=r"context of 1024: use --config.chunk_size=1024"):
        evaluation.evaluate(config, tmp_path)


def test_cli_errors_are_one_line(tmp_path):
    for args, status, message in [
        (["--config.dataset=nope"], 1, "Unknown dataset 'nope'"),
        (["--config.compressors=gzip,zip"], 1, "Unknown compressor 'zip'"),
        (["--config.datset=x"], 2, 'no such config field: datset. Did you mean "dataset"'),
        (["--config.dataset=file:/no/such"], 1, "No such file"),
        (["--config.lm.dtype=bfloat16"], 1, "--config.lm.dtype is now --config.dtype"),
        (["--config.hf.dtype=float32"], 1, "--config.hf.dtype is now --config.dtype"),
        (["--config.dtype=float16"], 1, "--config.dtype='float16': give float32 or bfloat16"),
    ]:
        result = _cli(*args, f"--workdir={tmp_path}")
        assert result.returncode == status, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)


def test_the_integer_path_can_be_rated_too(run, text_file, tmp_path):
    config = _config(dataset=f"file:{text_file}", compressors=f"lm:{run}", **LM_OPTIONS)
    config.lm.portable = True
    config.lm.verify = True
    (record,) = evaluation.evaluate(config, tmp_path)
    assert record["coded_path"] == "integer" and record["verified"]
    # The log-loss is the float model's; the integer tables code within a few percent of it.
    assert abs(record["coded_bytes"] - record["log_loss_bytes"]) <= 0.03 * record["log_loss_bytes"]


def test_default_lanes_and_dtype_are_recorded_as_they_resolve(run, text_file, shared_models):
    """lanes 0 means compress.py's --lanes=0 (from the device's memory: 64 on a CPU) and dtype ''
    the run's own; a record made with the values they resolve to is the same record."""
    name, source = f"lm:{run}", sources.get_source(f"file:{text_file}")

    def identity(**overrides):
        config = _config(dataset=f"file:{text_file}", compressors=name, **overrides)
        options = language_model.LanguageModelCompressor.options(config)
        return evaluation._identity(config, source, name, {}, lambda: shared_models(run, **options))

    auto = identity(chunk_size=CHUNK)
    assert (eval_config.get_config().lm.lanes, eval_config.get_config().dtype) == (0, "")
    lm = _lm(run, shared_models)
    assert auto["lanes"] == lm_coder.default_lanes(lm.coding.net, CHUNK)
    if jax.default_backend() == "cpu":
        assert auto["lanes"] == 64
    assert auto["dtype"] == lm.model_cfg.dtype == "float32"
    assert identity(chunk_size=CHUNK, dtype="float32", **{"lm.lanes": auto["lanes"]}) == auto
    assert identity(chunk_size=CHUNK, **{"lm.portable": True})["lanes"] is None  # integer path


def test_an_hf_identity_resolves_dtype_and_lanes_without_loading(tmp_path):
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    config = hf_fixtures.gpt2_config(n_positions=32)
    hf_fixtures.write_model(model_dir, config, hf_fixtures.random_weights(config, seed=1))
    hf_fixtures.write_bpe_tokenizer(model_dir)
    name, source = f"hf:{model_dir}", sources.get_source("pydocs")

    def identity(**overrides):
        config = _config(compressors=name, **overrides)
        return evaluation._identity(config, source, name, {}, lambda: pytest.fail("loaded"))

    auto = identity()
    assert (auto["dtype"], auto["max_tokens"], auto["top_k"]) == ("float32", 32, 100)
    assert auto["model_sha256"] == fingerprints.hf_fingerprint(model_dir)
    # The float32 record an older run made under --config.hf.dtype=float32 is reused.
    assert identity(dtype="float32", **{"lm.lanes": auto["lanes"]}) == auto
    assert identity(dtype="bfloat16")["dtype"] == "bfloat16"
    assert identity(**{"lm.coded": False})["lanes"] is None
    hf = pretrained_model.PretrainedCompressor(model_dir, lanes=0, dtype="")
    assert (hf.lanes, hf.model.dtype) == (auto["lanes"], "float32")  # as the identity says


def _log_loss_config(run, text_file, **overrides):
    config = _config(dataset=f"file:{text_file}", compressors=f"gzip,lm:{run}", **LM_OPTIONS)
    config.update_from_flattened_dict({"chunking": "chunked", "lm.coded": False, **overrides})
    return config


def _stream_fingerprint(run, step):
    """The model fingerprint compress.py writes into its streams (compressors.lm_stream)."""
    from compressors import model_names

    return model_names.load(run, step=step).fingerprint


def test_a_newer_checkpoint_is_rated_again(run, text_file, tmp_path, capsys):
    old = _by_key(
        evaluation.evaluate(_log_loss_config(run, text_file, **{"lm.step": 10}), tmp_path)
    )
    new = _by_key(evaluation.evaluate(_log_loss_config(run, text_file), tmp_path))
    old, new = old[f"lm:{run}", "chunked"], new[f"lm:{run}", "chunked"]
    assert (old["lm_step"], new["lm_step"]) == (10, 20)
    assert new["model_sha256"] == _stream_fingerprint(run, None)  # as streams name it
    assert old["model_sha256"] == _stream_fingerprint(run, 10) != new["model_sha256"]
    assert new["log_loss_bytes"] != old["log_loss_bytes"]
    err = capsys.readouterr().err
    assert "differs in model_sha256" in err and "lm_step (10 -> 20)" in err
    assert "Reused 1 record of" in err  # gzip
    with open(tmp_path / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["compressor"].startswith("lm:")]
    assert [r["lm_step"] for r in rows] == ["20"]  # the step-10 record was replaced


def test_an_identical_run_reuses_and_says_when_made(run, text_file, tmp_path, capsys, monkeypatch):
    first = evaluation.evaluate(_log_loss_config(run, text_file), tmp_path)
    capsys.readouterr()
    for name in ("_evaluate_lm", "_evaluate_classical"):
        monkeypatch.setattr(evaluation, name, lambda *a: pytest.fail("rated again"))
    again = evaluation.evaluate(_log_loss_config(run, text_file), tmp_path)
    assert again == first
    made = sorted(r["created"] for r in first)
    when = made[0] + (f" to {made[-1]}" if made[-1] != made[0] else "")
    assert f"Reused 2 records of {tmp_path / 'results.jsonl'} (made {when})" in (
        capsys.readouterr().err
    )


def _spy(monkeypatch) -> list[str]:
    """Records the rating functions the evaluator calls, in order."""
    rated = []
    for name in ("_evaluate_classical", "_evaluate_lm"):
        real = getattr(evaluation, name)
        spy = lambda *a, real=real, name=name: rated.append(name) or real(*a)  # noqa: E731
        monkeypatch.setattr(evaluation, name, spy)
    return rated


def test_a_changed_setting_or_file_is_rated_again(run, text_file, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data.txt"
    data.write_bytes(text_file.read_bytes())
    config = _log_loss_config(run, data)
    rated = _spy(monkeypatch)
    first = _by_key(evaluation.evaluate(config, tmp_path))
    assert rated == ["_evaluate_classical", "_evaluate_lm"]
    config.lm.coded = True  # the coded figure too: a record of the log-loss alone is not enough
    coded = _by_key(evaluation.evaluate(config, tmp_path))[f"lm:{run}", "chunked"]
    assert rated[2:] == ["_evaluate_lm"]  # gzip was reused
    assert coded["passes"] == "log_loss+coded" and coded["coded_bytes"] > 0
    assert "differs in passes (log_loss -> log_loss+code" in capsys.readouterr().err
    other = corpus.pydocs_bytes()[300_000:]
    data.write_bytes(other[: len(text_file.read_bytes())])  # same size, other content
    changed = _by_key(evaluation.evaluate(config, tmp_path))
    assert rated[3:] == ["_evaluate_classical", "_evaluate_lm"]
    for key in first:
        assert changed[key]["dataset_sha256"] != first[key]["dataset_sha256"], key
    err = capsys.readouterr().err
    assert "Reused" not in err and "differs in dataset_sha256" in err


def test_run_fingerprint_is_the_streams(run):
    """Computed independently: compress.py's streams must keep the fingerprints they have."""
    from training import checkpoints

    config = json.loads((pathlib.Path(run) / "config.json").read_text())
    _, params, step = checkpoints.restore_params(run)
    description = json.dumps(config["model"], sort_keys=True).encode() + b"bytes"
    digest = hashlib.sha256(description + hashlib.sha256(b"").digest() + b"20")
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(params)[0],
        key=lambda kv: jax.tree_util.keystr(kv[0]),
    ):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    assert step == 20
    assert fingerprints.run_fingerprint(run) == (20, digest.hexdigest())
    assert fingerprints.run_fingerprint(run, 20, params=params) == (20, digest.hexdigest())
    assert _stream_fingerprint(run, None) == digest.hexdigest()
    with pytest.raises(ValueError, match="give the step"):
        fingerprints.run_fingerprint(run, params=params)


def test_images_from_a_path_are_rated_again_when_a_file_changes(tmp_path, monkeypatch, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    config = _config(dataset=f"images:{folder}", compressors="gzip", chunking="chunked")
    rated = _spy(monkeypatch)
    first = _by_key(evaluation.evaluate(config, tmp_path / "out"))
    evaluation.evaluate(config, tmp_path / "out")
    assert rated == ["_evaluate_classical"]  # the same files: reused
    assert "Reused 1 record" in capsys.readouterr().err
    Image.fromarray(255 - pixels).save(folder / "a.png")
    changed = _by_key(evaluation.evaluate(config, tmp_path / "out"))
    assert rated == ["_evaluate_classical"] * 2
    key = ("gzip", "chunked")
    assert changed[key]["dataset_files"] != first[key]["dataset_files"]
    assert "differs in dataset_files" in capsys.readouterr().err
