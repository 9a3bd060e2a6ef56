"""On-device augmentation: torchvision crop semantics, exact resampling, flips, layout independence."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl4eo_jax import augment


def torchvision_get_params(rng, height, width, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params, transcribed with a NumPy generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_boxes_follow_torchvision_distribution():
    n, size, scale, ratio = 4000, 48, (0.08, 1.0), (3 / 4, 4 / 3)
    keys = jax.random.split(jax.random.key(0), n)
    boxes = np.asarray(jax.vmap(lambda k: augment.random_resized_crop_box(k, size, size, scale, ratio))(keys))
    top, left, h, w = boxes.T
    assert (h > 0).all() and (w > 0).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= size).all() and (left + w <= size).all()
    rng = np.random.default_rng(0)
    ref = np.array([torchvision_get_params(rng, size, size, scale, ratio) for _ in range(n)])
    for ours, theirs in [(h * w / size**2, ref[:, 2] * ref[:, 3] / size**2), (w / h, ref[:, 3] / ref[:, 2]),
                         (top + h / 2, ref[:, 0] + ref[:, 2] / 2)]:
        qs = [0.1, 0.25, 0.5, 0.75, 0.9]
        np.testing.assert_allclose(np.quantile(ours, qs), np.quantile(theirs, qs), rtol=0.06, atol=0.5 / size)


def test_crop_box_fallback_is_the_clamped_centre_crop():
    # A very wide image with ratio bounds that no sampled box can meet: the fallback applies.
    box = augment.random_resized_crop_box(jax.random.key(1), 10, 100, scale=(0.99, 1.0), ratio=(1.0, 1.0))
    assert np.asarray(box).tolist() == [0, 45, 10, 10]


@pytest.mark.parametrize("out_size", [16, 24, 40])
def test_resize_matches_scale_and_translate(out_size):
    image = jax.random.normal(jax.random.key(0), (24, 24, 5))
    rows = augment.linear_resample_matrix(jnp.asarray(0), jnp.asarray(24), 24, out_size)
    ours = augment.resample(image[None], rows[None], rows[None])[0]
    ref = jax.image.scale_and_translate(image, (out_size, out_size, 5), (0, 1), jnp.full(2, out_size / 24),
                                        jnp.zeros(2), method="linear", antialias=False)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5)


def test_crop_resize_matches_scale_and_translate_of_the_crop():
    image = jax.random.normal(jax.random.key(2), (30, 28, 3))
    top, left, h, w = 5, 3, 17, 21
    rows = augment.linear_resample_matrix(jnp.asarray(top), jnp.asarray(h), 30, 12)
    cols = augment.linear_resample_matrix(jnp.asarray(left), jnp.asarray(w), 28, 12)
    ours = augment.resample(image[None], rows[None], cols[None])[0]
    crop = image[top : top + h, left : left + w]
    ref = jax.image.scale_and_translate(crop, (12, 12, 3), (0, 1), jnp.array([12 / h, 12 / w]), jnp.zeros(2),
                                        method="linear", antialias=False)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5)


def _cfg(**kw):
    base = dict(crop_size=24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, vflip=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_identity_settings_return_the_input():
    images = jax.random.normal(jax.random.key(3), (4, 24, 24, 13))
    out = augment.random_crop_flip(jax.random.key(0), images, jnp.arange(4), _cfg())
    np.testing.assert_allclose(np.asarray(out), np.asarray(images), atol=1e-6)
    np.testing.assert_allclose(np.asarray(augment.center_crop_resize(images, 1.0, 24)), np.asarray(images))


def test_flips_fire_with_their_probability():
    images = jax.random.normal(jax.random.key(4), (512, 8, 8, 2))
    out = np.asarray(augment.random_crop_flip(jax.random.key(1), images, jnp.arange(512), _cfg(crop_size=8, hflip=0.5)))
    flipped = np.all(np.isclose(out, np.asarray(images)[:, :, ::-1]), axis=(1, 2, 3))
    same = np.all(np.isclose(out, np.asarray(images)), axis=(1, 2, 3))
    assert np.all(flipped | same)
    assert 0.4 < flipped.mean() < 0.6
    out = np.asarray(augment.random_crop_flip(jax.random.key(1), images, jnp.arange(512), _cfg(crop_size=8, vflip=1.0)))
    np.testing.assert_allclose(out, np.asarray(images)[:, ::-1], atol=1e-6)


def test_augmentation_depends_on_the_example_index_not_its_position():
    images = jax.random.normal(jax.random.key(5), (8, 20, 20, 3))
    index = jnp.arange(100, 108)
    cfg = _cfg(crop_size=12, crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5)
    out = augment.random_crop_flip(jax.random.key(7), images, index, cfg)
    perm = jnp.asarray([3, 1, 7, 0, 2, 6, 5, 4])
    out_perm = augment.random_crop_flip(jax.random.key(7), images[perm], index[perm], cfg)
    np.testing.assert_allclose(np.asarray(out_perm), np.asarray(out)[np.asarray(perm)], atol=1e-6)
    v1, v2 = augment.two_views(jax.random.key(7), images, index, cfg)
    assert not np.allclose(np.asarray(v1), np.asarray(v2))
