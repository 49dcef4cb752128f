"""The device check's report: its figures beside their goals and this device's rooflines.

`device_info` reads what the device is and can do (memory bandwidth from NVML or a datasheet
table, peak bf16 FLOP/s from the table); `build` gathers the parts' states into the report
whose keys BENCHMARKS.md documents, and `write` writes it as `device_check.json` and as the
Markdown table `device_check.md`.
"""

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import sys
import time

from bench import part_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ("portable", "float")  # the coding paths: the default (integer) one and the float one
REQUIRED = ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl", "tqdm")

GOALS = {  # the goals on one H100 (BENCHMARKS.md)
    "train_tokens_per_second": {"200K": 15e6, "3.2M": 8e6},
    "eval_log_loss_mb_per_s": 40.0,
    "compress_mb_per_s": 2.0,
    "decompress_mb_per_s": 2.0,
    "coder_symbols_per_second": 20e6,
    "online_kb_per_s": 1e6 / 15 / 60 / 1e3,  # 1 MB in under 15 minutes each way
}


# Datasheet figures by device kind (first match wins), used where NVML does not answer.
_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
)
_PEAK_BF16 = (  # dense bf16 FLOP/s
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def device_info() -> dict:
    """The first device: kind, memory, bandwidth and peak bf16 rate (and where they come from)."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    info = {
        "kind": device.device_kind,
        "platform": device.platform,
        "count": jax.device_count(),
        "jax": jax.__version__,
        "memory_bytes": stats.get("bytes_limit") or ram_bytes(),
    }
    bandwidth, source = _bandwidth(device)
    info.update(bandwidth_bytes_per_s=bandwidth, bandwidth_source=source)
    peak = _lookup(_PEAK_BF16, device.device_kind) if device.platform == "gpu" else None
    info.update(
        peak_bf16_flops=peak,
        peak_source=f"datasheet, by device kind ({device.device_kind})" if peak else "unknown",
    )
    return info


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _lookup(table, kind: str):
    return next((value for key, value in table if key in kind), None)


def _bandwidth(device) -> tuple[float | None, str]:
    """Memory bandwidth from NVML (bus width x max memory clock x 2), else the datasheet table."""
    if device.platform != "gpu":
        return None, f"unknown for a {device.platform} device"
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(getattr(device, "local_hardware_id", 0) or 0)
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        bandwidth = bus_bits / 8 * clock_mhz * 1e6 * 2
        if 1e11 < bandwidth < 2e13:  # else a misreading: fall back to the table
            return bandwidth, f"NVML: {bus_bits}-bit bus x {clock_mhz} MHz x 2"
    except Exception:  # noqa: BLE001 - NVML absent or unsupported: the table
        pass
    bandwidth = _lookup(_BANDWIDTH, device.device_kind)
    source = f"datasheet, by device kind ({device.device_kind})" if bandwidth else "unknown"
    return bandwidth, source


# ---------------------------------------------------------------------------------------------
# The report


def build(states: dict, settings, small: bool, started: float) -> dict:
    """The report of a run (see `assemble`), or, should that fail, one of the raw states; with
    a note naming any required package that is missing (every part fails then: says why once).

    Args:
      states: each part's state, from `part_runner.run_parts`.
      settings: the run's `device_check.Settings`.
      small: whether this is a --small run (tiny presets).
      started: when the run started (Unix time).
    """
    try:
        report = assemble(states, settings, small, started)
    except Exception as e:  # noqa: BLE001 - a report of the raw states rather than none
        report = {"notes": {"report": f"{type(e).__name__}: {e}"}, "parts": states}
    missing = [m for m in REQUIRED if not _importable(m)]
    if missing:
        report["notes"]["setup"] = (
            f"missing packages: {', '.join(missing)} (carry them as wheels: README, Notes)"
        )
    return report


def write(report: dict, out: str) -> str:
    """Writes `out/device_check.json` and `out/device_check.md`; returns the Markdown."""
    with open(os.path.join(out, "device_check.json"), "w") as f:
        json.dump(report, f, indent=2, default=part_runner.plain)
    try:
        text = markdown(report)
    except Exception as e:  # noqa: BLE001 - the JSON is written; say why the table is not
        text = f"No table: {type(e).__name__}: {e}; see device_check.json.\n"
    with open(os.path.join(out, "device_check.md"), "w") as f:
        f.write(text)
    return text


def assemble(states: dict, settings, small: bool, started: float) -> dict:
    """The report: the documented keys (BENCHMARKS.md), rooflines, goals, settings, parts."""
    values = {name: state.get("values", {}) for name, state in states.items()}

    def get(part, key):
        return values.get(part, {}).get(key)

    info = next((v["device_info"] for v in values.values() if v.get("device_info")), {})
    finite = [get(f"train_{s}", "finite") for s in settings.train_sizes] + [get("model", "finite")]
    report = {
        "device": f"{info.get('kind', 'unknown')} ({info.get('platform', 'unknown')})",
        "jax_version": info.get("jax") or _version("jax"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "mode": "small: CPU, tiny presets" if small else "full",
        "roundtrip_exact": _combine([get(f"decompress_{p}", "exact") for p in PATHS]),
        "deterministic": _combine(
            [get(f"compress_{p}", "deterministic") for p in PATHS]
            + [x for p in PATHS if (x := get(f"decompress_{p}", "reencode_identical")) is not None]
        ),
        "attention_max_abs_diff": get("attention", "max_abs_diff"),
        "train_step_finite": _combine([x for x in finite if x is not None]),
        "train_tokens_per_second": {
            s: get(f"train_{s}", "tokens_per_second") for s in settings.train_sizes
        },
        "eval_log_loss_mb_per_s": get("eval", "log_loss_mb_per_s"),
        "eval_coded_mb_per_s": get("eval", "coded_mb_per_s"),
        "compress_mb_per_s": get("compress_portable", "mb_per_s"),
        "decompress_mb_per_s": get("decompress_portable", "mb_per_s"),
        "compress_float_mb_per_s": get("compress_float", "mb_per_s"),
        "decompress_float_mb_per_s": get("decompress_float", "mb_per_s"),
        "coder_symbols_per_second": _min(
            get("coder", "encode_symbols_per_second"), get("coder", "decode_symbols_per_second")
        ),
        "coder_encode_symbols_per_second": get("coder", "encode_symbols_per_second"),
        "coder_decode_symbols_per_second": get("coder", "decode_symbols_per_second"),
        "online_exact": get("online", "exact"),
        "online_compress_kb_per_s": get("online", "compress_kb_per_s"),
        "online_decompress_kb_per_s": get("online", "decompress_kb_per_s"),
        "notes": _notes(states),
    }
    for part in ("model", "eval", "coder", "online"):
        report[part] = _figures(values, part)
    report["rooflines"] = _rooflines(values, info, settings)
    report["goals"] = GOALS
    report["roundtrip"] = _roundtrip(values)
    report["device_info"] = info
    report["versions"] = {p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")}
    report["host"] = {"cpus": os.cpu_count(), "machine": platform.machine()}
    report["settings"] = dataclasses.asdict(settings)
    report["parts"] = {
        name: {k: state.get(k) for k in ("status", "stage", "seconds", "budget_s", "reason")}
        for name, state in states.items()
    }
    report["wall_seconds"] = time.time() - started
    return report


def _notes(states: dict) -> dict:
    """Part -> why it did not finish, or the note it left."""
    notes = {}
    for name, state in states.items():
        if state.get("status") != "ok":
            notes[name] = f"{state.get('status')}: {state.get('reason', '')}"
        elif state.get("values", {}).get("note"):
            notes[name] = state["values"]["note"]
    return notes


def _figures(values: dict, part: str) -> dict:
    """A part's values without the device's description."""
    return {k: v for k, v in values.get(part, {}).items() if k != "device_info"}


def _roundtrip(values: dict) -> dict:
    """Per coding path: the three checks, and the compress and decompress parts' figures."""
    return {
        p: {
            "exact": values.get(f"decompress_{p}", {}).get("exact"),
            "deterministic": values.get(f"compress_{p}", {}).get("deterministic"),
            "reencode_identical": values.get(f"decompress_{p}", {}).get("reencode_identical"),
            "compress": _figures(values, f"compress_{p}"),
            "decompress": _figures(values, f"decompress_{p}"),
        }
        for p in PATHS
    }


def _combine(checks: list) -> bool | None:
    """False if any check failed, True if all passed, None if some did not run."""
    if any(c is False for c in checks):
        return False
    return True if checks and all(c is True for c in checks) else None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _min(*xs):
    xs = [x for x in xs if x is not None]
    return min(xs) if len(xs) == 2 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _rooflines(values: dict, info: dict, settings) -> dict:
    """Each speed's bound on this device, with its basis."""
    bandwidth, peak = info.get("bandwidth_bytes_per_s"), info.get("peak_bf16_flops")
    bw_src, peak_src = info.get("bandwidth_source", "unknown"), info.get("peak_source", "unknown")
    out = {}
    for size in settings.train_sizes:
        flops = values.get(f"train_{size}", {}).get("flops_per_token")
        out[f"train_{size}"] = {
            "value": peak / flops if peak and flops else None,
            "unit": "tokens/s",
            "basis": f"peak bf16 FLOP/s ({peak_src}) / (6 N + 6 L T d) FLOP per token",
        }
    flops = values.get("eval", {}).get("log_loss_flops_per_byte")
    out["eval_log_loss"] = {
        "value": peak / flops / 1e6 if peak and flops else None,
        "unit": "MB/s",
        "basis": f"peak bf16 FLOP/s ({peak_src}) / (2 N + 2 L T d) FLOP per byte",
    }
    kv_basis = (
        f"memory bandwidth ({bw_src}) / KV-cache bytes a chunk's decode steps read (each "
        "step reads the filled prefix of its attention block, all layers, keys and values)"
    )
    for key, part in (
        ("eval_coded", "eval"),
        ("compress_portable", "compress_portable"),
        ("compress_float", "compress_float"),
    ):
        v = values.get(part, {})
        out[key] = {
            "value": _roofline_mb_per_s(v, bandwidth),
            "unit": "MB/s",
            "basis": kv_basis + f" ({v.get('kv_cache_dtype', '?')} cache)",
        }
        if key == "compress_float":
            out[key]["float32_cache"] = _roofline_mb_per_s(v, bandwidth, 4)
            out[key]["bfloat16_cache"] = _roofline_mb_per_s(v, bandwidth, 2)
    table = values.get("coder", {}).get("table_bytes")
    out["coder"] = {
        "value": bandwidth / (table + 8) if bandwidth and table else None,
        "unit": "symbols/s",
        "basis": f"memory bandwidth ({bw_src}) / (its frequency table + 8 bytes) per decoded "
        "symbol: loose, the coder is sequential per lane",
    }
    return out


def _roofline_mb_per_s(values: dict, bandwidth: float | None, itemsize: float | None = None):
    """Chunk bytes over the time to read its KV traffic at `bandwidth`; `itemsize` replaces the
    cache's bytes per position with a plain cache of that element size."""
    if not bandwidth or not values.get("kv_positions_read_per_chunk"):
        return None
    per_position = values["kv_bytes_per_position"]
    if itemsize:
        per_position = 2 * values["num_layers"] * values["width"] * itemsize
    seconds = values["kv_positions_read_per_chunk"] * per_position / bandwidth
    return values["chunk_bytes"] / seconds / 1e6


# Markdown ----------------------------------------------------------------------------------


def _num(x, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "**NO**"
    for scale, prefix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(x) >= scale and unit in ("tokens/s", "symbols/s", "B/s", "FLOP/s"):
            return f"{x / scale:.{digits}g}{prefix}{unit}"
    return f"{x:.{digits}g} {unit}".strip()


def _details(r: dict) -> str:
    """What the figures were measured on, in a sentence each."""
    m, rt, c = r["model"], r["roundtrip"], r["coder"]
    size = r["settings"]["size"]
    out = [
        f"Model: {size}, {m['steps']} bf16 steps on pydocs, {_num(m['bits_per_byte'])} bits/byte "
        "training loss."
        if m.get("steps")
        else f"Model: {size}, random weights (no run from the `model` part)."
    ]
    for path in PATHS:
        v = rt[path]["compress"]
        if v.get("raw_bytes"):
            out.append(
                f"Round trip, {path}: {v['raw_bytes']:,} bytes (a random chunk, then pydocs) to "
                f"{v['compressed_bytes']:,} ({_num(v['bits_per_byte'])} bits/byte, the model's "
                f"log-loss {_num(v['ideal_bits_per_byte'])}), {v['num_chunks']} chunks of "
                f"{v['chunk_bytes']} bytes in groups of {v['lanes']} lanes, "
                f"{v['kv_cache_dtype']} KV cache."
            )
    o = r["online"]
    if o.get("raw_bytes"):
        recipe = f" `--recipe={o['recipe']}`" if o["recipe"] else ""
        out.append(
            f"Online: `{o['model']}`{recipe}, {o['raw_bytes']:,} bytes of pydocs to "
            f"{o['compressed_bytes']:,} ({_num(o['bits_per_byte'])} bits/byte), compiles "
            "included."
        )
    if r["eval"].get("lanes"):
        out.append(f"Eval: {r['eval']['lanes']} coder lanes.")
    if c.get("lanes"):
        out.append(
            f"Coder: {c['lanes']:,} lanes x {c['length']:,} symbols, encode "
            f"{_num(c.get('encode_symbols_per_second'), 'symbols/s')}, decode "
            f"{_num(c.get('decode_symbols_per_second'), 'symbols/s')}."
        )
    return " ".join(out)


def markdown(report: dict) -> str:
    """The report as a Markdown table: each figure beside its goal and roofline."""
    r, roof = report, report["rooflines"]
    small = r["mode"].startswith("small")
    lines = [
        f"Accelerator check, {r['date']}: {r['device']}, jax {r['jax_version']}"
        + (" (CPU, tiny presets: NOT comparable to the goals)" if small else ""),
        "",
        f"`{r['command']}` ({r['wall_seconds']:.0f} s)",
        "",
        "| check | result | goal | roofline |",
        "|---|---:|---|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(r)),
        "",
        f"Rooflines: bandwidth {_num(r['device_info'].get('bandwidth_bytes_per_s'), 'B/s')} "
        f"({r['device_info'].get('bandwidth_source', 'unknown')}), peak bf16 "
        f"{_num(r['device_info'].get('peak_bf16_flops'), 'FLOP/s')} "
        f"({r['device_info'].get('peak_source', 'unknown')}). Float path with a float32 cache: "
        f"{_num(roof['compress_float'].get('float32_cache'), 'MB/s')}, bf16 cache: "
        f"{_num(roof['compress_float'].get('bfloat16_cache'), 'MB/s')}.",
        "",
        _details(r),
    ]
    if r["notes"]:
        lines += ["", "Notes:", *(f"* `{k}`: {v}" for k, v in r["notes"].items())]
    return "\n".join(lines) + "\n"


def _rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The table's rows: (check, result, goal, roofline)."""
    roof, rt = r["rooflines"], r["roundtrip"]
    rows = [
        ("round trip exact, portable (default)", _num(rt["portable"].get("exact")), "exact", "-"),
        ("round trip exact, float (`--noportable`)", _num(rt["float"].get("exact")), "exact", "-"),
        ("round trip exact, online", _num(r["online_exact"]), "exact", "-"),
        ("two encodes identical (deterministic)", _num(r["deterministic"]), "yes", "-"),
        ("bf16 train step finite", _num(r["train_step_finite"]), "yes", "-"),
        (
            "cuDNN vs XLA attention, max abs log-prob diff (bf16)",
            _num(r["attention_max_abs_diff"]),
            "bf16 rounding",
            "-",
        ),
    ]
    for size, value in r["train_tokens_per_second"].items():
        goal = GOALS["train_tokens_per_second"].get(size)
        rows.append(
            (
                f"train {size}, tokens/s",
                _num(value, "tokens/s"),
                f">= {_num(goal, 'tokens/s')}" if goal else "-",
                _num(roof.get(f"train_{size}", {}).get("value"), "tokens/s"),
            )
        )
    speed_rows = (
        ("eval, log-loss", "eval_log_loss_mb_per_s", ">= 40 MB/s", "eval_log_loss"),
        ("eval, coded", "eval_coded_mb_per_s", "bounded by the coder", "eval_coded"),
        ("compress, portable", "compress_mb_per_s", ">= 2 MB/s", "compress_portable"),
        ("decompress, portable", "decompress_mb_per_s", ">= 2 MB/s", "compress_portable"),
        ("compress, float", "compress_float_mb_per_s", ">= 2 MB/s", "compress_float"),
        ("decompress, float", "decompress_float_mb_per_s", ">= 2 MB/s", "compress_float"),
    )
    for label, key, goal, roof_key in speed_rows:
        rows.append((label, _num(r[key], "MB/s"), goal, _num(roof[roof_key]["value"], "MB/s")))
    online = f">= {GOALS['online_kb_per_s']:.2f} KB/s (1 MB in 15 min)"
    for way in ("compress", "decompress"):
        rows.append((f"online, {way}", _num(r[f"online_{way}_kb_per_s"], "KB/s"), online, "-"))
    rows.append(
        (
            "range coder alone (min of encode, decode)",
            _num(r["coder_symbols_per_second"], "symbols/s"),
            ">= 20 Msymbols/s",
            _num(roof["coder"]["value"], "symbols/s"),
        )
    )
    return rows
