"""training.checks: numeric ranges (finite values only) and the memory a training config needs."""

import math

import pytest

from configs import default
from models import transformer
from training import checks

GB = 10**9


def _config(**overrides):
    config = default.get_config("size=test")
    config.model.dtype = "float32"
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.mark.parametrize("field", ["optim.peak_lr", "optim.weight_decay", "model.rope_base"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_real_fields_must_be_finite(field, value):
    with pytest.raises(ValueError, match=rf"^{field}={value!r}: must be a number in [\[(]0, inf\)"):
        checks.check(_config(**{field: value}))


def test_the_memory_floor_counts_parameters_optimizer_activations_and_log_probs():
    config = _config(**{"train.batch_size": 8})
    parts = checks.training_memory_bytes(config, num_devices=2)
    model = transformer.TransformerConfig.from_config(config.model, 256)
    tokens = 4 * 64  # each of 2 devices takes 4 windows of 64 tokens
    assert parts == {
        "params": 16 * transformer.closed_form_num_params(model),
        "activations": tokens * 2 * 32 * 4,  # layers * width float32 values a token
        "log_probs": tokens * 256 * 4,
        "host": 3 * 8 * 64 * 4,  # the batch and two evaluation sets of one batch, int32
    }


def test_presets_fit_where_they_are_trained():
    checks.check_memory(_config(), device_bytes=None, host_bytes=1 * GB)
    big = default.get_config("size=100M")
    big.model.dtype = "bfloat16"
    checks.check_memory(big, device_bytes=80 * GB, host_bytes=128 * GB)


@pytest.mark.parametrize(
    "field, value, device_bytes, where",
    [
        ("train.batch_size", 10**9, None, "RAM"),
        ("model.num_layers", 100_000, None, "RAM"),
        ("model.num_layers", 1_000_000, 80 * GB, "memory on each device"),
        ("model.width", 100_000, 80 * GB, "memory on each device"),
    ],
)
def test_a_config_that_cannot_fit_is_refused_naming_the_field_and_what_fits(
    field, value, device_bytes, where
):
    config = _config(**{field: value})
    with pytest.raises(ValueError) as refused:
        checks.check_memory(config, device_bytes=device_bytes, host_bytes=16 * GB)
    message = str(refused.value)
    assert message.startswith(f"{field}={value}: training this config needs at least ")
    assert f"of {where} (parameters with Adam's state " in message
    assert f"more than the {80 if device_bytes else 16}.0 GB here; {field} up to about " in message
    fits = int(message.rsplit("up to about ", 1)[1].split()[0].replace(",", ""))
    checks.check_memory(_config(**{field: fits}), device_bytes, 16 * GB)  # the hint is right
    with pytest.raises(ValueError):
        checks.check_memory(_config(**{field: fits + 1}), device_bytes, 16 * GB)
