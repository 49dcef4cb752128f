import math

import pytest

from configs import default, sizes
from models import transformer

PAPER_COUNTS = {"200K": 231_936, "800K": 856_832, "3.2M": 3_286_272}


def _count(size):
    config = default.get_config(f"size={size}")
    model_cfg = transformer.TransformerConfig.from_config(config.model, vocab_size=256)
    import jax

    shapes = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(0)))
    return transformer.num_params(shapes), transformer.closed_form_num_params(model_cfg)


@pytest.mark.parametrize("size", [s for s in sizes.PRESETS if s != "test"])
def test_preset_count_matches_its_name(size):
    measured, closed_form = _count(size)
    assert measured == closed_form
    # Nominal names are the paper's; 200K is its loosest (231,936 params, 16% over).
    assert abs(math.log(measured / sizes.nominal_params(size))) < math.log(1.2)


@pytest.mark.parametrize("size,count", PAPER_COUNTS.items())
def test_paper_sizes_match_paper_architecture(size, count):
    assert _count(size)[0] == count


def test_paper_sizes_shape():
    for size, (layers, width, heads, context) in {
        "200K": (4, 64, 4, 2048),
        "800K": (4, 128, 4, 2048),
        "3.2M": (4, 256, 8, 2048),
    }.items():
        model = default.get_config(f"size={size}").model
        assert (model.num_layers, model.width, model.num_heads, model.context_length) == (
            layers,
            width,
            heads,
            context,
        )


def test_bad_arg_and_override_fail_clearly():
    with pytest.raises(ValueError, match="Unknown size"):
        default.get_config("size=7M")
    with pytest.raises(ValueError, match="expected key=value"):
        default.get_config("sise=3.2M")
    config = default.get_config()
    with pytest.raises(AttributeError):
        config.train.stepz = 3  # locked: a misspelt override fails
