"""pcam_core.config: the config dataclasses are the one source of every default."""

from __future__ import annotations

import inspect

from torch import nn

from pcam_core.config import ModelConfig
from pcam_core.models import create_model


def test_create_model_dropout_defaults_to_the_model_config():
    assert inspect.signature(create_model).parameters["dropout"].default == ModelConfig().dropout
    rates = [m.p for m in create_model("pcamnet").modules() if isinstance(m, nn.Dropout)]
    assert rates and all(p == ModelConfig().dropout for p in rates)
