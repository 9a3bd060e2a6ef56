"""On-device augmentation: torchvision crop semantics, exact resampling and blur, op probabilities,
identity settings, multi-crop, season views and layout independence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl4eo_jax import augment
from ssl4eo_jax.evaluators import transfer
from ssl4eo_jax.presets import pretrain as common
from ssl4eo_jax.presets.files import load_config_module


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


def aug(ops=(), crop_size=24, **params):
    """An aug config with only ``ops`` active; ``params`` as {"op.param": value}."""
    cfg = common.aug_config(crop_size, tuple(ops))
    for key, value in params.items():
        op, name = key.split(".")
        cfg[op][name] = value
    return cfg


def views(cfg, images, seed=0, index=None, mean=None, std=None):
    n, c = images.shape[0], images.shape[-1]
    index = jnp.arange(n) if index is None else index
    mean = jnp.zeros(c) if mean is None else mean
    std = jnp.ones(c) if std is None else std
    return [np.asarray(v) for v in augment.make_views(jax.random.key(seed), images, index, cfg, mean, std)]


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


def numpy_gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur(image, (0, 0), sigma) for 8-bit images: separable, reflect-101 border."""
    ksize = int(np.round(6 * sigma + 1)) | 1
    r = (ksize - 1) // 2
    kernel = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")  # numpy's reflect == reflect-101
    rows = sum(kernel[i] * padded[i : i + image.shape[0]] for i in range(ksize))
    return sum(kernel[j] * rows[:, j : j + image.shape[1]] for j in range(ksize))


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_blur_matches_a_direct_separable_convolution(sigma):
    image = np.asarray(jax.random.normal(jax.random.key(3), (20, 20, 4)))
    g = augment.gaussian_blur_matrix(jnp.asarray(sigma), 20, max_radius=7)
    ours = np.einsum("oh,hwc,pw->opc", np.asarray(g), image, np.asarray(g))
    np.testing.assert_allclose(ours, numpy_gaussian_blur(image, sigma), atol=1e-5)


def test_blur_inside_a_view_has_a_random_sigma_per_sample():
    images = jnp.broadcast_to(jax.random.normal(jax.random.key(4), (1, 16, 16, 2)), (64, 16, 16, 2))
    out = views(aug(["blur"], **{"blur.p": 1.0}), images)[0]
    smoothness = np.abs(np.diff(out, axis=1)).mean(axis=(1, 2, 3))
    assert len(np.unique(np.round(smoothness, 5))) > 50  # sigmas differ between samples


def test_identity_settings_return_the_input():
    images = jax.random.normal(jax.random.key(5), (4, 24, 24, 13))
    np.testing.assert_allclose(views(aug([]), images)[0], np.asarray(images), atol=1e-6)
    crop = aug(["crop"], **{"crop.scale": (1.0, 1.0), "crop.ratio": (1.0, 1.0)})
    np.testing.assert_allclose(views(crop, images)[0], np.asarray(images), atol=1e-6)
    zero_p = aug(["brightness_contrast", "grayscale", "blur", "hflip", "vflip", "rot90", "solarize", "noise",
                  "band_drop"], **{f"{op}.p": 0.0 for op in ("brightness_contrast", "grayscale", "blur", "hflip",
                                                              "vflip", "rot90", "solarize", "noise", "band_drop")})
    np.testing.assert_allclose(views(zero_p, images)[0], np.asarray(images), atol=1e-6)
    np.testing.assert_allclose(np.asarray(augment.center_crop_resize(images, 1.0, 24)), np.asarray(images))


@pytest.mark.parametrize("op,p", [("brightness_contrast", 0.8), ("grayscale", 0.2), ("blur", 0.5), ("hflip", 0.5),
                                  ("vflip", 0.3), ("solarize", 0.2), ("noise", 0.5), ("band_drop", 0.5),
                                  ("rot90", 0.6)])
def test_each_op_fires_with_its_probability(op, p):
    n = 800
    images = jax.random.normal(jax.random.key(6), (n, 8, 8, 4))
    out = views(aug([op], **{f"{op}.p": p}), images)[0]
    changed = ~np.all(np.isclose(out, np.asarray(images), atol=1e-6), axis=(1, 2, 3))
    expected = p * (0.75 if op == "rot90" else 1.0)  # a quarter of the rotations are by 0 degrees
    assert abs(changed.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.01


def test_rotations_and_flips_are_exact_dihedral_maps():
    images = jax.random.normal(jax.random.key(7), (400, 6, 6, 2))
    out = views(aug(["rot90", "hflip"], **{"rot90.p": 1.0}), images)[0]
    src = np.asarray(images)
    candidates = []
    for k in range(4):
        rotated = np.rot90(src, k, axes=(1, 2))
        candidates += [rotated, rotated[:, :, ::-1]]
    matches = np.stack([np.all(np.isclose(out, c), axis=(1, 2, 3)) for c in candidates])
    assert matches.any(axis=0).all()
    counts = matches.sum(axis=1)
    assert (counts > 20).all()  # all eight dihedral transforms occur


def test_photometric_ops_act_on_the_physical_signal():
    """Ops take physical values and each view is normalised last: brightness scales the physical
    signal by one factor per image, grayscale is the physical band mean, solarize reflects about
    mean + threshold * std, band drop sets a band to its mean."""
    mean, std = jnp.asarray([1000.0, 2000.0, 500.0]), jnp.asarray([300.0, 600.0, 100.0])
    raw = jax.random.uniform(jax.random.key(8), (64, 5, 5, 3), minval=100, maxval=3000)
    physical = lambda out: out * np.asarray(std) + np.asarray(mean)  # noqa: E731
    out = views(aug(["brightness"], **{"brightness.p": 1.0}), raw, mean=mean, std=std)[0]
    ratio = physical(out) / np.asarray(raw)
    assert np.allclose(ratio, ratio[:, :1, :1, :1], rtol=1e-4)  # one factor per image, every band
    assert 0.6 <= ratio.min() and ratio.max() <= 1.4 and ratio.std() > 0.1
    gray = physical(views(aug(["grayscale"], **{"grayscale.p": 1.0}), raw, mean=mean, std=std)[0])
    np.testing.assert_allclose(gray, np.broadcast_to(np.asarray(raw).mean(-1, keepdims=True), gray.shape), rtol=1e-4)
    sol = physical(views(aug(["solarize"], **{"solarize.p": 1.0, "solarize.threshold": 0.5}), raw, mean=mean,
                         std=std)[0])
    t = np.asarray(mean + 0.5 * std)
    np.testing.assert_allclose(sol, np.where(np.asarray(raw) >= t, 2 * t - np.asarray(raw), np.asarray(raw)), rtol=1e-4,
                               atol=1e-3)
    dropped = views(aug(["band_drop"], **{"band_drop.p": 1.0, "band_drop.max_bands": 2}), raw, mean=mean, std=std)[0]
    whole = np.all(dropped == 0.0, axis=(1, 2))
    assert whole.any(axis=1).all()  # every image loses a band, set to its mean: 0 once normalised
    np.testing.assert_allclose(physical(dropped)[~np.broadcast_to(whole[:, None, None], dropped.shape)],
                               np.asarray(raw)[~np.broadcast_to(whole[:, None, None], dropped.shape)], rtol=1e-4)


def test_fine_tuning_views_are_the_pre_training_views_mapped_onto_the_encoder_bands():
    """Fine-tuning (``finetune._train_step``) and pre-training (``train.make_train_step``) call
    ``make_views`` on the same physical values with the data's statistics; a transfer's band map
    acts on the finished views, so the photometric ops see the physical signal either way."""
    mean, std = jnp.asarray([1000.0, 2000.0, 500.0]), jnp.asarray([300.0, 600.0, 100.0])
    raw = jax.random.uniform(jax.random.key(3), (16, 8, 8, 3), minval=100, maxval=3000).astype(jnp.uint16)
    mapping = transfer.band_map(["B04", "B99", "B02"], ["B02", "B03", "B04"])  # reorder, one band missing
    cfg = aug(["crop", "brightness_contrast", "grayscale", "hflip"], crop_size=6,
              **{"brightness_contrast.p": 1.0, "grayscale.p": 0.5})
    index = jnp.arange(16)
    plain = augment.make_views(jax.random.key(1), raw, index, cfg, mean, std)
    mapped = augment.make_views(jax.random.key(1), raw, index, cfg, mean, std, bands=mapping.apply)
    for p, m in zip(plain, mapped):
        np.testing.assert_array_equal(np.asarray(m), np.asarray(mapping.apply(p)))
        assert np.all(np.asarray(m)[..., 1] == 0.0)  # the missing band: its mean
        np.testing.assert_array_equal(np.asarray(m)[..., 0], np.asarray(p)[..., 2])


def test_band_drop_zeroes_one_to_k_whole_bands():
    images = jax.random.normal(jax.random.key(9), (300, 4, 4, 13)) + 5.0
    out = views(aug(["band_drop"], **{"band_drop.p": 1.0, "band_drop.max_bands": 6}), images)[0]
    dropped = np.all(out == 0.0, axis=(1, 2))  # (N, C): whole bands
    partly = np.any(out == 0.0, axis=(1, 2)) & ~dropped
    assert not partly.any()
    n = dropped.sum(axis=1)
    assert n.min() == 1 and n.max() == 6 and set(np.unique(n)) == set(range(1, 7))


def test_pad_crop_is_a_window_of_the_zero_padded_image():
    images = jax.random.normal(jax.random.key(10), (50, 32, 32, 2))
    out = views(aug(["pad_crop"], crop_size=32), images)[0]
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(50):
        found = any(np.array_equal(out[i], padded[i, t : t + 32, l : l + 32]) for t in range(9) for l in range(9))
        assert found


def test_multi_crop_and_per_view_overrides():
    cfg = aug(["crop", "solarize"], crop_size=24, **{"solarize.p": 0.0})
    cfg.local_views, cfg.local_crop_size = 4, 10
    cfg.global_overrides = ({}, {"solarize": {"p": 1.0}})
    out = views(cfg, jax.random.normal(jax.random.key(11), (8, 32, 32, 3)) + 3.0)
    assert [v.shape for v in out] == [(8, 24, 24, 3)] * 2 + [(8, 10, 10, 3)] * 4
    assert out[0].max() > 1.0 and out[1].max() <= 0.0  # only the second view is solarized (t = 0)


def test_season_views_draw_two_different_dates():
    dates = jnp.arange(4, dtype=jnp.float32)[None, :, None, None, None]
    images = jnp.broadcast_to(dates, (200, 4, 8, 8, 2))  # every pixel holds its date
    v1, v2 = views(aug([], crop_size=8), images)
    d1, d2 = v1[:, 0, 0, 0], v2[:, 0, 0, 0]
    assert (d1 != d2).all() and set(np.unique(d1)) == {0, 1, 2, 3}


def test_augmentation_depends_on_the_example_index_not_its_position():
    images = jax.random.normal(jax.random.key(12), (8, 20, 20, 3))
    index = jnp.arange(100, 108)
    cfg = common.aug_config(12)
    out = views(cfg, images, seed=7, index=index)
    perm = np.asarray([3, 1, 7, 0, 2, 6, 5, 4])
    out_perm = views(cfg, images[perm], seed=7, index=index[perm])
    for a, b in zip(out, out_perm):
        np.testing.assert_allclose(b, a[perm], atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_augmentation_study_presets():
    assert set(common.AUG_STUDY) >= {"full", "no_crop", "no_blur", "no_band_drop", "crop_only_0.2",
                                     "crop_only_0.5", "crop_only_0.8"}
    barlow = load_config_module("barlow")
    cfg = barlow.get_config("demo,aug=crop_only_0.8")
    assert tuple(cfg.aug.ops) == ("crop",) and tuple(cfg.aug.crop.scale) == (0.8, 1.0)
    no_crop = barlow.get_config("demo,aug=no_crop")
    spec = augment.view_specs(no_crop.aug)[0]
    assert spec.size is None and "crop" not in spec.ops and "band_drop" in spec.ops
    with pytest.raises(ValueError, match="Unknown augmentation preset"):
        barlow.get_config("demo,aug=everything")
    bad = common.aug_config(8, ("crop", "sharpen"))
    with pytest.raises(ValueError, match="sharpen"):
        augment.view_specs(bad)
