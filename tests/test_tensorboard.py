"""TensorBoard events and profiling of a run (issue 14), read back with TensorBoard's own event reader;
the whole run that writes them is ``tests/test_train.py``'s whole-job test."""


import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.profiling import profile_window
from ssl4eo_jax.tensorboard_events import flatten_numbers, rgb_composite, view_grid


def _events(workdir: str) -> EventAccumulator:
    events = EventAccumulator(workdir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def check_events(workdir: str, logged: list[dict], results: dict) -> None:
    """The run's events (read with TensorBoard's own reader) hold every logged step once, after a resume
    that re-logged some steps, the evaluation of ``results``, the config and results text, and the
    augmented-view grid; ``tests/test_train.py``'s whole-job test calls it."""
    events = _events(workdir)
    steps = [r["step"] for r in logged]
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == steps  # what the killed run logged after its checkpoint is purged
    np.testing.assert_allclose([e.value for e in losses], [r["loss"] for r in logged], rtol=1e-6)
    for tag in ("train/lr", "train/embedding_std", "train/effective_rank"):
        assert [e.step for e in events.Scalars(tag)] == steps, tag
    # images/s at every log point but the first step of each (re)start, which is timed as compilation.
    measured = [r["step"] for r in logged if r["images_per_sec"] is not None]
    assert [e.step for e in events.Scalars("train/images_per_sec")] == measured and len(measured) < len(steps)
    for encoder in ("pretrained", "random_init"):
        (knn,) = events.Scalars(f"eval/{encoder}/knn/test/oa")
        assert knn.value == pytest.approx(results[encoder]["knn"]["test"]["oa"])
    tensors = events.Tags()["tensors"]
    assert "config/text_summary" in tensors and "results/text_summary" in tensors
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"method": "barlow"' in config_text
    (grid,) = events.Images("augmented_views")  # written once, by the first run at step 0
    assert grid.step == 0 and grid.width > 0 and grid.height > 0


def test_true_colour_composite_stretches_each_image_between_its_percentiles():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 3000, size=(2, 16, 16, 4)).astype(np.float32)
    bands = ("B02", "B03", "B04", "B08")
    rgb = rgb_composite(images, bands)
    assert rgb.shape == (2, 16, 16, 3) and rgb.dtype == np.uint8
    red = images[0, ..., 2]  # B04 is red
    low, high = np.percentile(images[0, ..., [2, 1, 0]], [2, 98])
    expected = np.clip((red - low) / (high - low), 0, 1) * 255
    np.testing.assert_allclose(rgb[0, ..., 0], expected.round(), atol=1)
    grid = view_grid([images, images[:, :8, :8]], bands, pad=2)
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2, 3)
    np.testing.assert_array_equal(grid[2:18, 2:18], rgb[0])


def test_flatten_numbers_keeps_finite_numbers_only():
    tree = {"loss": 1.5, "ok": True, "name": "x", "knn": {"test": {"oa": 61.0, "nan": float("nan")}}, "n": 3}
    assert flatten_numbers(tree, "eval") == {"eval/loss": 1.5, "eval/knn/test/oa": 61.0, "eval/n": 3.0}


def test_profile_steps_parse():
    assert profile_window("", 10) is None
    assert profile_window("3", 10) == (3, 3) and profile_window(" 2, 4", 10) == (2, 4)


@pytest.mark.parametrize("value", ["5,2", "0,2", "2,11", "a,b", "1,2,3"])
def test_bad_profile_steps_name_the_key(value):
    with pytest.raises(ConfigError, match=r"config.train.profile_steps=.*1 <= first <= last <= 10"):
        profile_window(value, 10)
