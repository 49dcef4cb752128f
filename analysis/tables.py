"""Tables of compression results: the paper's Table 1 layout for eval_compress records."""

import pathlib


def format_table(records: list[dict]) -> str:
    """The records as the paper's Table 1: raw then adjusted rates (%), datasets as columns."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    rows: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: r["chunking"] == "chunked"):  # unchunked first
        chunk = "inf" if r["chunking"] == "unchunked" else str(r["chunk_size"])
        mode = r.get("seven_bit", "none")
        label = _short(r["compressor"]) + ("" if mode == "none" else f" ({mode} 7-bit)")
        rows.setdefault((chunk, label), {})[r["dataset"]] = r
    widths = [max(6, len(_short(d))) for d in datasets]
    name_width = max(10, *(len(label) for _, label in rows))
    cols = " ".join(f"{_short(d):>{w}}" for d, w in zip(datasets, widths, strict=True))
    span = max(len(cols), len("adjusted rate (%)"))
    lines = [
        f"{'':{5 + name_width + 14}}  {'raw rate (%)':>{span}}  {'adjusted rate (%)':>{span}}",
        f"{'chunk':>5} {'compressor':<{name_width}} {'params':>12}  {cols:>{span}}  {cols:>{span}}",
    ]
    for (chunk, label), by_dataset in rows.items():
        first = next(iter(by_dataset.values()))
        num_params = first.get("num_params", first.get("params", 0))  # older records: 'params'
        cells = {
            key: " ".join(
                f"{100 * by_dataset[d][key]:>{w}.1f}" if d in by_dataset else f"{'-':>{w}}"
                for d, w in zip(datasets, widths, strict=True)
            )
            for key in ("raw_rate", "adjusted_rate")
        }
        lines.append(
            f"{chunk:>5} {label:<{name_width}} {num_params:>12,}  "
            f"{cells['raw_rate']:>{span}}  {cells['adjusted_rate']:>{span}}"
        )
    for r in records:
        if r.get("log_loss_rate") is not None:
            coded = r.get("coded_bytes")
            lines.append(
                f"{_short(r['compressor'])} on {_short(r['dataset'])}: "
                + (f"coded {8 * coded / r['raw_bytes']:.4f} bits/byte, " if coded else "")
                + f"log-loss {8 * r['log_loss_rate']:.4f} bits/byte"
                + (", every chunk decoded back and verified" if r.get("verified") else "")
            )
    return "\n".join(lines)


def _short(spec: str) -> str:
    """'NAME:/a/b/c' -> 'NAME:c', to keep the table narrow (the records keep the full spec)."""
    name, sep, arg = spec.partition(":")
    return f"{name}:{pathlib.PurePath(arg).name or arg}" if sep and "/" in arg else spec
