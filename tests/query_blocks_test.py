"""bench/query_blocks.py: the parallel pass at several query-block sizes gives the same tables."""

from bench import query_blocks


def test_blocked_and_unblocked_passes_give_the_same_tables():
    rows = query_blocks.measure("test", context=64, rows=2, query_blocks=[64, 10], repeats=1)
    assert [r["blocks"] for r in rows] == [1, 6]
    assert all(r["same_tables"] for r in rows)
    assert all(r["compile_seconds"] > 0 and r["seconds"] > 0 for r in rows)


def test_layers_overrides_the_presets_depth():
    (row,) = query_blocks.measure(
        "test", context=16, rows=1, query_blocks=[16], repeats=1, layers=1
    )
    assert row["layers"] == 1 and row["same_tables"]
