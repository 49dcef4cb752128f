"""Tests for models.numerics: what a stream records of the machine, and the coding set-up."""

import json
import os
import subprocess
import sys

from models import numerics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(code: str, xla_flags: str, tmp_path) -> dict:
    env = {**os.environ, "XLA_FLAGS": xla_flags, "LMC_COMPILE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_CONFIGURE = """
import json, os
import jax
from models import numerics
numerics.configure_coding()
jax.jit(lambda x: x * 2)(jax.numpy.ones(3)).block_until_ready()  # XLA accepts the flags
print(json.dumps({"flags": os.environ["XLA_FLAGS"], "env": numerics.environment(),
                  "cache": jax.config.jax_compilation_cache_dir}))
"""


def test_configure_coding_sets_deterministic_gpu_flags_and_the_compile_cache(tmp_path):
    out = _child(_CONFIGURE, "--xla_cpu_max_isa=AVX", tmp_path)
    assert out["flags"].split() == ["--xla_cpu_max_isa=AVX", *numerics.DETERMINISTIC_GPU_FLAGS]
    assert out["cache"] == str(tmp_path / "cache")
    # On a CPU the GPU-only flags cannot change the floats: the stream does not record them;
    # the ISA cap is recorded by what it means, the instruction set compiled for.
    assert out["env"]["xla_flags"] == "" and out["env"]["isa"] == "AVX"
    # An explicit choice is kept (and, being numerics-relevant on a GPU, would be recorded).
    out = _child(_CONFIGURE, "--xla_gpu_autotune_level=2", tmp_path)
    assert "--xla_gpu_autotune_level=2" in out["flags"].split()
    assert "--xla_gpu_autotune_level=0" not in out["flags"]


def test_differences_name_what_differs():
    here = {"jax": "0.11.2", "backend": "cpu", "isa": "AVX2", "xla_flags": ""}
    made = {**here, "isa": "SSE4_2", "jax": "0.10.0"}
    found = numerics.differences(made, here)
    assert any("XLA_FLAGS=--xla_cpu_max_isa=SSE4_2" in d for d in found)
    assert any(d.startswith("jax 0.10.0 when compressing, 0.11.2 here") for d in found)
    assert numerics.differences(here, here) == []


_AVX2_CPU = {"sse4_2", "avx", "avx2"}


def _here(monkeypatch, xla_flags: str, cpu_flags: set[str] = _AVX2_CPU) -> dict[str, str]:
    """This process's CPU environment as a stream records it, under `xla_flags`."""
    monkeypatch.setattr(numerics, "_cpu_flags", lambda: cpu_flags)
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    return {"backend": "cpu", "isa": numerics.cpu_isa(), "xla_flags": numerics.numeric_xla_flags()}


def test_a_cap_at_the_cpus_own_level_is_no_difference(monkeypatch):
    made = _here(monkeypatch, "")
    here = _here(monkeypatch, "--xla_cpu_max_isa=avx2 --xla_dump_to=/tmp/x")
    assert here == made and numerics.differences(made, here) == []
    # Streams that recorded the cap among their flags compare by its meaning too.
    assert numerics.differences({**made, "xla_flags": "--xla_cpu_max_isa=AVX2"}, here) == []
    fast = _here(monkeypatch, "--xla_cpu_enable_fast_math=true --xla_cpu_max_isa=AVX2")
    assert numerics.differences(made, fast) == [
        "xla_flags (none) when compressing, --xla_cpu_enable_fast_math=true here"
    ]


def test_a_cap_below_the_stream_is_named_as_the_cause(monkeypatch):
    made = _here(monkeypatch, "")
    here = _here(monkeypatch, "--xla_cpu_max_isa=SSE4_2")
    assert numerics.differences(made, here) == [
        "the stream was made for AVX2 code and XLA_FLAGS caps this CPU at SSE4_2 "
        "(--xla_cpu_max_isa=SSE4_2): decode with XLA_FLAGS=--xla_cpu_max_isa=AVX2"
    ]
    here = _here(monkeypatch, "", cpu_flags={"sse4_2", "avx"})  # a CPU without AVX2
    assert numerics.differences(made, here) == [
        "the stream was made for AVX2 code and this CPU lacks it (runs AVX): decode on a CPU "
        "with AVX2"
    ]
