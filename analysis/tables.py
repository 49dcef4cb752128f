"""Tables of compression results: the paper's Table 1 layout for eval_compress records."""

import pathlib

_CELLS = ("raw %", "bits/B", "adj. %")


def format_table(records: list[dict]) -> str:
    """The records as the paper's Table 1: per dataset the raw rate (%), bits per byte and the
    adjusted rate (%); one row per compressor and chunking ('inf': the whole dataset as one
    stream). An adjusted rate is marked '*' where the model's own cost (2 bytes per parameter)
    exceeds the bytes rated: it only means something on a dataset as large as the paper's."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    rows: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: r["chunking"] == "chunked"):  # unchunked first
        chunk = "inf" if r["chunking"] == "unchunked" else str(r["chunk_size"])
        label = _label(r)
        rows.setdefault((chunk, label), {})[r["dataset"]] = r
    width = 7 * len(_CELLS) - 1
    names = [_short(d)[:width] for d in datasets]
    name_width = max(10, *(len(label) for _, label in rows)) if rows else 10
    lead = f"{'chunk':>5} {'compressor':<{name_width}} {'params':>11}"
    lines = [
        f"{'':{len(lead)}}" + "".join(f" | {n:^{width}}" for n in names),
        lead + f" | {' '.join(f'{c:>6}' for c in _CELLS)}" * len(datasets),
    ]
    starred = False
    for (chunk, label), by_dataset in rows.items():
        first = next(iter(by_dataset.values()))
        num_params = first.get("num_params", first.get("params", 0))  # older records: 'params'
        cells = []
        for d in datasets:
            r = by_dataset.get(d)
            if r is None:
                cells.append(" ".join(f"{'-':>6}" for _ in _CELLS))
                continue
            star = 2 * num_params > r["raw_bytes"]
            starred |= star
            adjusted = f"{100 * r['adjusted_rate']:.1f}{'*' if star else ''}"
            cells.append(f"{100 * r['raw_rate']:>6.1f} {r['bits_per_byte']:>6.3f} {adjusted:>6}")
        lines.append(
            f"{chunk:>5} {label:<{name_width}} {num_params:>11,}"
            + "".join(f" | {c}" for c in cells)
        )
    if starred:
        lines.append("* the model (2 bytes per parameter) is larger than the bytes rated here")
    lines += _model_notes(records)
    return "\n".join(lines)


def _label(r: dict) -> str:
    """The row's name: the compressor, a pretrained model's top-k, the 7-bit mode."""
    mode = r.get("seven_bit", "none")
    label = _short(r["compressor"])
    if r.get("top_k") is not None:
        label += f" top-{r['top_k']}" if r["top_k"] else " full"
    return label + ("" if mode == "none" else f" ({mode} 7-bit)")


def _model_notes(records: list[dict]) -> list[str]:
    notes = []
    for r in records:
        if r.get("log_loss_rate") is not None:
            coded = r.get("coded_bytes")
            escapes = (
                f", {r['escapes']:,} of {r['tokens']:,} tokens escaped the top {r['top_k']}"
                if coded and r.get("top_k")
                else ""
            )
            notes.append(
                f"{_label(r)} on {_short(r['dataset'])}: "
                + (f"coded {8 * coded / r['raw_bytes']:.4f} bits/byte, " if coded else "")
                + f"log-loss {8 * r['log_loss_rate']:.4f} bits/byte"
                + escapes
                + (", every chunk decoded back and verified" if r.get("verified") else "")
            )
    return notes


def _short(spec: str) -> str:
    """'NAME:/a/b/c' -> 'NAME:c', to keep the table narrow (the records keep the full spec)."""
    name, sep, arg = spec.partition(":")
    return f"{name}:{pathlib.PurePath(arg).name or arg}" if sep and "/" in arg else spec
