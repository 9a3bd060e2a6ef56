"""The Grain pipeline: global stream order, epochs, worker processes, exact iterator resume."""

import jax
import numpy as np
import pytest

from ssl4eo_jax import sharding
from ssl4eo_jax.data import open_split, pipeline


def _take(it, n):
    return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def test_stream_is_indexed_and_each_epoch_covers_the_split(demo_dir):
    src = open_split(demo_dir, "train")
    mesh = sharding.make_mesh()
    it = pipeline.DeviceIterator(pipeline.train_dataset(src, 16, seed=0), mesh, workers=0)
    batches = _take(it, 12)  # two epochs of 6 batches
    it.close()
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(192))
    fingerprint = lambda im: int(im.astype(np.int64).sum())  # noqa: E731
    expected = sorted(fingerprint(src[i]["image"]) for i in range(len(src)))
    for epoch in (batches[:6], batches[6:]):
        assert sorted(fingerprint(im) for b in epoch for im in b["image"]) == expected
    first = [fingerprint(im) for im in batches[0]["image"]]
    second = [fingerprint(im) for im in batches[6]["image"]]
    assert first != second  # reshuffled every epoch


def test_worker_processes_give_the_same_batches(demo_dir):
    src = open_split(demo_dir, "train")
    mesh = sharding.make_mesh()
    ref_it = pipeline.DeviceIterator(pipeline.train_dataset(src, 16, seed=1), mesh, workers=0)
    mp_it = pipeline.DeviceIterator(pipeline.train_dataset(src, 16, seed=1), mesh, workers=2)
    try:
        for a, b in zip(_take(ref_it, 4), _take(mp_it, 4)):
            for key in pipeline.TRAIN_KEYS:
                np.testing.assert_array_equal(a[key], b[key])
        # Exact resume from a saved state into a fresh iterator with the same worker count.
        state = mp_it.get_state()
        after = _take(mp_it, 3)
        resumed = pipeline.DeviceIterator(pipeline.train_dataset(src, 16, seed=1), mesh, workers=2)
        resumed.set_state(state)
        for a, b in zip(_take(resumed, 3), after):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["index"], b["index"])
        resumed.close()
    finally:
        ref_it.close()
        mp_it.close()


def test_a_split_smaller_than_a_batch_is_a_clear_error(demo_dir):
    with pytest.raises(ValueError, match="48 patches, fewer than one global batch.*global_batch"):
        pipeline.train_dataset(open_split(demo_dir, "val"), 64, seed=0)


def test_eval_batches_cover_every_example_once_with_padding(demo_dir):
    src = open_split(demo_dir, "test")
    mesh = sharding.make_mesh()
    batches = [jax.tree.map(np.asarray, b) for b in pipeline.eval_batches(src, 32, mesh)]
    assert len(batches) == 2 and all(b["image"].shape[0] == 32 for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 48 and (mask[48:] == 0).all()
    labels = np.concatenate([b["label"] for b in batches])[:48]
    np.testing.assert_array_equal(labels, [src[i]["label"] for i in range(48)])


def test_global_batch_must_divide_over_devices():
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    with pytest.raises(ValueError, match="global_batch=12 is not divisible by the 8 devices.*multiple of 8"):
        sharding.check_batch_size(12, mesh)
    sharding.check_batch_size(16, mesh)
