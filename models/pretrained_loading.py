"""Reading Hugging Face safetensors checkpoints onto devices, sharded or not.

`safetensors_files` finds each tensor's file (one `model.safetensors`, or shards listed by
`model.safetensors.index.json`). `load_params` maps checkpoint names to parameter paths
(`model.layers.3.self_attn.q_proj.weight` is `('layers_3', 'self_attn', 'q_proj', 'weight')`),
checks names and shapes against the architecture, and reads each tensor straight into its
device layout: whole on one device, or split over a 1-D 'model' mesh (`_partition_spec`).
"""

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from models import pretrained_config

Params = dict[str, Any]

_CONV1D_NAMES = ("c_attn", "c_proj", "c_fc")  # GPT-2 weights stored [in, out]
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")  # buffers
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"
_FIT_FRACTION = 0.8  # shard automatically above this fraction of one device's memory


def safetensors_files(model_dir: os.PathLike) -> dict[str, pathlib.Path]:
    """Maps every tensor name to its file (from the index, or the single file's header).

    Raises:
      FileNotFoundError: neither model.safetensors nor an index, or a shard named by the index.
    """
    from safetensors import safe_open

    model_dir = pathlib.Path(model_dir)
    index = model_dir / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map = pretrained_config.read_json(index, "safetensors index")["weight_map"]
        files = {name: model_dir / file for name, file in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: a shard listed in {index}")
        return files
    single = model_dir / _SAFETENSORS_SINGLE
    if not single.is_file():
        others = sorted(p.name for p in model_dir.glob("*.safetensors"))
        hint = (
            f" (found {others}: rename to {_SAFETENSORS_SINGLE} or add an index)"
            if others
            else (" (only .safetensors weights are read: convert PyTorch .bin files first)")
        )
        raise FileNotFoundError(f"{single} not found and no {_SAFETENSORS_INDEX}{hint}")
    with safe_open(single, framework="np") as f:
        return dict.fromkeys(f.keys(), single)


def _tree_key(name: str) -> tuple[str, ...]:
    """'model.layers.3.mlp.up_proj.weight' -> ('layers_3', 'mlp', 'up_proj', 'weight')."""
    parts = name.split(".")
    if parts[0] in ("model", "transformer") and len(parts) > 1:
        parts = parts[1:]
    key: list[str] = []
    for part in parts:
        if part.isdigit() and key:
            key[-1] = f"{key[-1]}_{part}"
        else:
            key.append(part)
    return tuple(key)


def _checkpoint_names(
    files: dict[str, pathlib.Path], cfg: pretrained_config.PretrainedConfig
) -> dict:
    """Maps parameter paths to checkpoint names, dropping known buffers and a tied lm_head."""
    names = {}
    for name in files:
        key = _tree_key(name)
        if name.endswith(_IGNORED_SUFFIXES) or (key[0] == "lm_head" and cfg.tie_word_embeddings):
            continue
        names[key] = name
    return names


def _hf_name(key: tuple[str, ...]) -> str:
    """Inverse of `_tree_key` without the 'model.' prefix: ('layers_3', 'mlp') -> 'layers.3.mlp'."""
    parts = []
    for part in key:
        stem, _, number = part.rpartition("_")
        parts.append(f"{stem}.{number}" if stem and number.isdigit() else part)
    return ".".join(parts)


def load_params(
    model_dir: os.PathLike,
    cfg: pretrained_config.PretrainedConfig,
    shapes: Params,
    *,
    shard: bool | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Params:
    """Reads the safetensors weights of a model, checking names and shapes.

    Args:
      model_dir: holds model.safetensors (or shards with their index).
      cfg: the model's architecture.
      shapes: its parameter tree of `jax.ShapeDtypeStruct` leaves: names, shapes and dtypes.
      shard: split the parameters over `devices` (None: only if they do not fit one device).
      devices: devices to use (default: all local devices).

    Returns:
      The parameters, a nested dict of device arrays shaped as `shapes`.

    Raises:
      FileNotFoundError: see `safetensors_files`.
      ValueError: a missing tensor, an unexpected one (another architecture), a shape mismatch.
    """
    files = safetensors_files(model_dir)
    names = _checkpoint_names(files, cfg)
    expected = traverse_util.flatten_dict(shapes)  # keys: tuples, as `_tree_key` gives
    _check_names(model_dir, cfg, names, expected, len(files))
    devices = list(devices or jax.local_devices())
    if shard is None:
        shard = len(devices) > 1 and not _fits_one_device(expected.values(), devices[0])
    mesh = Mesh(np.array(devices), ("model",)) if shard else None
    flat = {}
    by_file: dict[pathlib.Path, list] = {}
    for key in expected:
        by_file.setdefault(files[names[key]], []).append(key)
    for path, keys in by_file.items():
        flat.update(_read_file(path, keys, names, expected, mesh, devices[0], model_dir))
    return traverse_util.unflatten_dict(flat)


def _check_names(model_dir, cfg, names: dict, expected: dict, num_tensors: int) -> None:
    """Raises ValueError unless the checkpoint holds exactly the tensors `expected` names."""
    for key in expected:
        if key not in names:
            raise ValueError(
                f"{model_dir}: missing tensor {_hf_name(key)!r} for {cfg.model_type} "
                f"({num_tensors} tensors in the checkpoint)"
            )
    unexpected = sorted(names[key] for key in names if key not in expected)
    if unexpected:
        raise ValueError(
            f"{model_dir}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all): the "
            f"checkpoint does not match the {cfg.model_type} architecture"
        )


def _read_file(path, keys, names, expected, mesh, device, model_dir) -> dict:
    """Reads the tensors `keys` of one safetensors file onto the devices."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="np") as f:
        for key in keys:
            want = expected[key]
            tensor = f.get_slice(names[key])
            shape = tuple(tensor.get_shape())
            if shape != want.shape:
                raise ValueError(
                    f"{model_dir}: tensor {names[key]!r} has shape {shape}, the config implies "
                    f"{want.shape}"
                )
            bf16 = tensor.get_dtype() == "BF16"
            if mesh is None:
                sharding = SingleDeviceSharding(device)
            else:
                sharding = NamedSharding(mesh, _partition_spec(key, shape, mesh.size))

            def read(index, tensor=tensor, bf16=bf16, dtype=want.dtype):
                array = np.asarray(tensor[index] if index else tensor[:])
                if bf16 and array.dtype != ml_dtypes.bfloat16:  # old safetensors: raw words
                    array = array.view(ml_dtypes.bfloat16)
                return array.astype(dtype)

            out[key] = jax.make_array_from_callback(shape, sharding, read)
    return out


def _partition_spec(key: tuple[str, ...], shape: tuple[int, ...], num_devices: int):
    """Splits matrices on their output dimension (embeddings on the vocabulary) if it divides."""
    if len(shape) != 2:
        return PartitionSpec()
    axis = 1 if any(part in _CONV1D_NAMES for part in key) else 0
    if shape[axis] % num_devices:
        axis = 1 - axis
    if shape[axis] % num_devices:
        return PartitionSpec()
    return PartitionSpec(*(("model" if a == axis else None) for a in range(2)))


def _fits_one_device(shapes, device) -> bool:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    if not limit:
        return True  # unknown (CPU): one device holds it
    size = sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize for s in shapes)
    return size <= _FIT_FRACTION * limit
