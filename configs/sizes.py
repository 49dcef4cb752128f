"""Model size presets, keyed by nominal parameter count.

The paper's three models (Deletang et al., 2024, Table 1) are `200K`, `800K` and `3.2M`: 4 layers,
MLP x4, rotary positions, 2048-byte context. Their measured counts with a 256-symbol vocabulary are
231,936 / 856,832 / 3,286,272 (the reference architecture's closed form
12*L*d^2 + 9*L*d + 2*V*d + V). `20K` and `65K` (widths 16 and 32,
21,312 and 66,944 parameters) extend the same 4-layer family downwards and larger presets upwards
for scaling studies; `test` trains in seconds on a
CPU. The names are nominal: results always record the count measured from the parameters.
"""

from typing import NamedTuple


class Preset(NamedTuple):
    """A model size."""

    num_layers: int
    width: int
    num_heads: int
    context_length: int


PRESETS = {
    "test": Preset(2, 32, 2, 64),
    "20K": Preset(4, 16, 2, 2048),
    "65K": Preset(4, 32, 4, 2048),
    "200K": Preset(4, 64, 4, 2048),
    "800K": Preset(4, 128, 4, 2048),
    "3.2M": Preset(4, 256, 8, 2048),
    "12M": Preset(7, 384, 6, 2048),
    "50M": Preset(12, 576, 9, 2048),
    "100M": Preset(12, 832, 13, 2048),
}


def nominal_params(name: str) -> float:
    """Returns the number a preset's name stands for ('3.2M' -> 3.2e6); `test` has none."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}[name[-1]]
    return float(name[:-1]) * scale
