"""CSV output shared by the analyses: floats written to 6 significant digits."""

import csv
import pathlib
from collections.abc import Sequence


def write_csv(path: str | pathlib.Path, rows: list[dict], fields: Sequence[str] = ()) -> None:
    """Writes `rows` to `path` with `fields` as columns (default: the first row's keys; keys
    outside them are left out). Writes nothing when there are neither rows nor fields."""
    fields = list(fields) or (list(rows[0]) if rows else [])
    if not fields:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
