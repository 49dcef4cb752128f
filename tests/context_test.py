"""The context-length study rates every compressor at every length on the same bytes."""

import csv

import pytest

from analysis import context


def test_study_covers_every_length_and_keeps_models_within_their_context(tmp_path, tiny_run):
    rows = context.study(
        [tiny_run],
        ["pydocs:test", "random"],
        [16, 32, 64],
        1024,
        tmp_path / "eval",
        progress=False,
    )
    by_key = {(r["dataset"], r["compressor"], r["chunk_size"]): r for r in rows}
    for dataset in ("pydocs:test", "random"):
        for length in (16, 32, 64):
            for name in ("gzip -9", "LZMA2"):
                row = by_key[(dataset, name, length)]
                assert row["raw_bytes"] == 1024 and row["num_chunks"] == 1024 // length
        lm = [k for k in by_key if k[0] == dataset and k[1].startswith("LM")]
        assert sorted(k[2] for k in lm) == [16, 32]  # never beyond the model's 32-byte context
    # random bytes do not compress (below 64 bytes the paper's header accounting, which
    # subtracts the size of a compressed zero byte from every chunk, flatters LZMA2 and gzip)
    assert all(r["raw_rate"] > 0.95 for k, r in by_key.items() if k[0] == "random" and k[2] == 64)
    assert all(r["raw_rate"] > 0.95 for k, r in by_key.items() if k[0] == "random" and "LM" in k[1])
    text = [by_key[("pydocs:test", "LZMA2", n)]["raw_rate"] for n in (16, 32, 64)]
    assert text == sorted(text, reverse=True)
    table = context.markdown_table(rows).splitlines()
    assert table[0] == "| dataset | compressor | 16 | 32 | 64 |"
    assert len(table) == 2 + 2 * 3  # header, rule, (gzip, LZMA2, LM) per dataset
    assert all(line.endswith("| - |") for line in table if " LM " in line)  # none at 64 B
    context.write_csv(rows, tmp_path / "context.csv")
    context.plot(rows, tmp_path / "context.png")
    with open(tmp_path / "context.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 2 * (3 * 2 + 2)
    assert (tmp_path / "context.png").stat().st_size > 10_000


def test_study_refuses_lengths_longer_than_the_budget(tmp_path):
    with pytest.raises(ValueError, match="less than one"):
        context.study([], ["random"], [2048], 1000, tmp_path)
