"""What fixes a model's floats on this machine, recorded in a stream and compared before decoding.

The float coding path is exact only where the decoder computes the encoder's floats bit for
bit (models/lm_coder.py). Beyond the jax version, XLA's results depend on the backend and device,
on the instruction set it compiles for (a CPU stream made under `--xla_cpu_max_isa=SSE4_2` does
not decode under AVX2), and on flags that change numerics. `environment()` describes all of that
compactly; `differences()` names what differs, so that decompression refuses up front with a
way out instead of failing after decoding starts.
"""

import os
import pathlib
import platform
import re

import jax

# What the coding path sets on a GPU: kernels that give the same floats in every process
# (deterministic reductions, no autotuning: a kernel chosen by timing could differ between the
# compressing and the decompressing process).
DETERMINISTIC_GPU_FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_autotune_level=0")

# XLA CPU instruction-set levels, lowest first, with the cpuinfo flag that enables each.
_ISA_LEVELS = [
    ("SSE4_2", "sse4_2"),
    ("AVX", "avx"),
    ("AVX2", "avx2"),
    ("AVX512", "avx512f"),
    ("AVX512_VNNI", "avx512_vnni"),
    ("AVX512_BF16", "avx512_bf16"),
    ("AMX", "amx_tile"),
]
# XLA flags that change numerics (the rest, e.g. dump or logging flags, do not).
_NUMERIC_FLAG = re.compile(
    r"--xla_(cpu_max_isa|cpu_enable_fast_math|cpu_fast_math\w*|gpu_deterministic_ops|"
    r"gpu_autotune_level|gpu_enable_fast_min_max|gpu_exhaustive_tiling_search|"
    r"backend_optimization_level|cpu_use_\w+|gpu_enable_triton_gemm|allow_excess_precision)"
    r"(=\S*)?"
)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


_ISA_NAMES = [level for level, _ in _ISA_LEVELS]
_ISA_CAP = re.compile(r"--xla_cpu_max_isa=(\w*)")


def cpu_isa(capped: bool = True) -> str:
    """The instruction-set level XLA compiles for on this CPU: the best the CPU has, capped by
    `--xla_cpu_max_isa` in XLA_FLAGS unless `capped` is False (e.g. 'AVX512'), or the machine's
    architecture off x86."""
    flags = _cpu_flags()
    if not flags:
        return platform.machine()
    best = "SSE4_2"
    for level, flag in _ISA_LEVELS:
        if flag in flags:
            best = level
    cap = isa_cap()
    if capped and cap:
        best = _ISA_NAMES[min(_ISA_NAMES.index(best), _ISA_NAMES.index(cap))]
    return best


def isa_cap() -> str:
    """The level `--xla_cpu_max_isa` in XLA_FLAGS caps the CPU at ('AVX2'), or '' (none, or a
    name XLA does not know)."""
    caps = _ISA_CAP.findall(os.environ.get("XLA_FLAGS", ""))
    cap = caps[-1].upper() if caps else ""
    return cap if cap in _ISA_NAMES else ""


def numeric_xla_flags(backend: str = "", xla_flags: str | None = None) -> str:
    """The numerics-relevant XLA flags in `xla_flags` (default: XLA_FLAGS), sorted (e.g.
    '--xla_cpu_enable_fast_math=false'); on `backend` 'cpu' the GPU-only ones, which cannot
    change a CPU's floats, are left out. `--xla_cpu_max_isa` is left out too: what it means,
    the instruction set compiled for, is recorded as `isa` (`cpu_isa`), so that a cap at the
    CPU's own level is no difference."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    found = (m[0] for m in _NUMERIC_FLAG.finditer(flags))
    return " ".join(
        sorted(
            f
            for f in found
            if not (backend == "cpu" and f.startswith("--xla_gpu") or _ISA_CAP.match(f))
        )
    )


def configure_coding(cache_dir: str | os.PathLike | None = None) -> None:
    """Sets up a process that codes on the float path; call it before JAX starts its backend.

    Adds `DETERMINISTIC_GPU_FLAGS` to XLA_FLAGS (unless the flag is already given: an explicit
    choice is kept and recorded) and turns on JAX's persistent compilation cache, so a
    decompressing process on the same machine loads the executables the compressing one
    compiled rather than compiling (and, on a GPU, choosing kernels) again.

    Args:
      cache_dir: the cache's folder (default: $LMC_COMPILE_CACHE, else
        ~/.cache/lmcompress/jax-cache); '' leaves the cache off.
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    for flag in DETERMINISTIC_GPU_FLAGS:
        if not any(f.split("=")[0] == flag.split("=")[0] for f in flags):
            flags.append(flag)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if cache_dir is None:
        default = pathlib.Path.home() / ".cache" / "lmcompress" / "jax-cache"
        cache_dir = os.environ.get("LMC_COMPILE_CACHE", str(default))
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def environment() -> dict[str, str]:
    """What fixes the floats of a computation here: jax version, backend, device kind, the CPU's
    instruction-set level (CPU only), a GPU's compute capability and CUDA / cuDNN versions, and
    the numerics-relevant XLA flags."""
    device = jax.devices()[0]
    backend = jax.default_backend()
    env = {
        "jax": jax.__version__,
        "backend": backend,
        "device": device.device_kind,
        "xla_flags": numeric_xla_flags(backend),
    }
    if backend == "cpu":
        env["isa"] = cpu_isa()
    else:
        capability = getattr(device, "compute_capability", None)
        if capability:
            env["compute_capability"] = str(capability)
        env.update(_cuda_versions())
    return env


def _cuda_versions() -> dict[str, str]:
    """CUDA runtime and cuDNN versions jaxlib reports ({} where it reports none)."""
    try:
        from jax._src.lib import cuda_versions  # not public API: read defensively
    except ImportError:
        return {}
    versions = {}
    for key, name in (("cuda", "cuda_runtime_get_version"), ("cudnn", "cudnn_get_version")):
        get = getattr(cuda_versions, name, None)
        try:
            if get is not None:
                versions[key] = str(get())
        except Exception:  # noqa: BLE001 (a driver problem must not stop compression)
            pass
    return versions


def differences(recorded: dict[str, str], here: dict[str, str] | None = None) -> list[str]:
    """What differs between a stream's recorded environment and this one, one phrase each."""
    here = environment() if here is None else here
    out = []
    for key in sorted(set(recorded) | set(here)):
        a, b = recorded.get(key, ""), here.get(key, "")
        if key == "xla_flags":  # streams made before the cap was left out (it is in `isa`)
            a, b = numeric_xla_flags(xla_flags=a), numeric_xla_flags(xla_flags=b)
        if a == b:
            continue
        if key == "isa" and a and b:
            out.append(_isa_difference(a, b))
        else:
            out.append(f"{key} {a or '(none)'} when compressing, {b or '(none)'} here")
    return out


def _isa_difference(made: str, here: str) -> str:
    names = _ISA_NAMES
    if made in names and here in names and names.index(here) > names.index(made):
        return (
            f"the stream was made for {made} code and this CPU runs {here} code: decode with "
            f"XLA_FLAGS=--xla_cpu_max_isa={made}"
        )
    best, cap = cpu_isa(capped=False), isa_cap()
    if made in names and best in names and cap and names.index(best) >= names.index(made):
        return (
            f"the stream was made for {made} code and XLA_FLAGS caps this CPU at {cap} "
            f"(--xla_cpu_max_isa={cap}): decode with XLA_FLAGS=--xla_cpu_max_isa={made}"
        )
    return (
        f"the stream was made for {made} code and this CPU lacks it (runs {here}): decode on a "
        f"CPU with {made}"
    )
