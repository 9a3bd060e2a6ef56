"""MoCo v3 and MAE on the demo data: the pieces of their official steps that the whole-step
training test (tests/test_methods.py) cannot see."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_methods import _trainer

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.byol import without_predictor
from ssl4eo_jax.methods.targets import cosine_momentum, ema


def test_mocov3_momentum_encoder_moves_with_the_next_iterations_momentum(demo_dir):
    """moco-v3 ``main_moco.py`` ``train``: iteration t calls ``adjust_moco_momentum(epoch + i / iters)``
    and ``model(x1, x2, m)`` updates the momentum encoder with that m *before* the keys; so after
    our step t the momentum encoder is ``ema(previous, params_{t+1}, m_{t+1})``; it never trains the
    frozen patch projection or the fixed position embeddings."""
    trainer = _trainer("mocov3", demo_dir)
    states = []
    trainer.run(2, observe=lambda s: states.append(jax.device_get(s)))
    first, second = states
    m = float(cosine_momentum(2, trainer.method.momentum, trainer.method.length.total_steps))
    expected = ema(first["extra"]["momentum_params"], without_predictor(second["params"]), m)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 second["extra"]["momentum_params"], expected)
    init = jax.device_get(trainer.init())
    for part in ("patch_embed", "pos_embed"):
        jax.tree.map(np.testing.assert_array_equal, second["params"]["encoder"][part], init["params"]["encoder"][part])
    assert not np.array_equal(second["params"]["encoder"]["cls_token"], init["params"]["encoder"]["cls_token"])
    # the position embeddings are MAE's fixed sine-cosine table
    assert np.abs(init["params"]["encoder"]["pos_embed"][0, 0]).max() == 0.0


def test_mae_trains_its_decoder_but_not_the_fixed_position_embeddings(demo_dir):
    trainer = _trainer("mae", demo_dir)
    _, metrics, state = trainer.run(2)
    state, init = jax.device_get(state), jax.device_get(trainer.init())
    np.testing.assert_array_equal(state["params"]["decoder"]["decoder_pos_embed"],
                                  init["params"]["decoder"]["decoder_pos_embed"])
    np.testing.assert_array_equal(state["params"]["encoder"]["pos_embed"], init["params"]["encoder"]["pos_embed"])
    assert not np.array_equal(state["params"]["decoder"]["mask_token"], init["params"]["decoder"]["mask_token"])
    assert not np.array_equal(state["params"]["encoder"]["patch_embed"]["kernel"],
                              init["params"]["encoder"]["patch_embed"]["kernel"])
    assert [m["mask_ratio"] for m in metrics] == [0.75, 0.75]


def test_mae_needs_a_vit_and_a_sensible_mask_ratio(demo_dir):
    from test_methods import method_config

    from ssl4eo_jax.methods import TrainLength, get_method

    config = method_config("mae", demo_dir)
    config.mae.mask_ratio = 1.0
    with pytest.raises(ConfigError, match=r"config\.mae\.mask_ratio=1\.0"):
        get_method(config, TrainLength(10.0, 16))
    config = method_config("mae", demo_dir)
    config.model = method_config("barlow", demo_dir).model
    with pytest.raises(ConfigError, match="MAE needs a ViT encoder"):
        get_method(config, TrainLength(10.0, 16))
