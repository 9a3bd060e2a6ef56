"""What the PyTorch reference does on the host, per sample, for the same two views.

``src/datasets/BigEarthNet/bigearthnet_dataset_seco.py`` + ``src/models/rs_transforms.py`` of
zhu-xlab/SSL4EO-Review: read every band's GeoTIFF, scale each band to uint8 with
``(x - (mean - 2 std)) / (4 std) * 255``, resize every band to 128x128 with bicubic interpolation,
stack HWC, then twice: RandomResizedCrop(112, scale=(0.2, 1)) with OpenCV bilinear resize,
brightness+contrast (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5, sigma in [0.1, 2]),
horizontal flip, channel drop (p=0.5), and ToTensor (CHW float / 255). Samples are loaded by a pool
of worker processes, as a PyTorch DataLoader with ``num_workers`` does.
"""

from __future__ import annotations

import math
import os
import random
import time

import numpy as np

from ssl4eo_jax.bench.fixtures import BANDS13


def _load(folder: str, mean: np.ndarray, std: np.ndarray, size: int = 128) -> np.ndarray:
    import cv2
    import rasterio

    name = os.path.basename(folder)
    bands = []
    for b, band in enumerate(BANDS13):
        with rasterio.open(os.path.join(folder, f"{name}_{band}.tif")) as src:
            x = src.read(1).astype(np.float32)
        lo = mean[b] - 2 * std[b]
        x = np.clip((x - lo) / (4 * std[b]) * 255.0, 0, 255).astype(np.uint8)
        bands.append(cv2.resize(x, (size, size), interpolation=cv2.INTER_CUBIC))
    return np.stack(bands, axis=-1)


def _random_resized_crop(img: np.ndarray, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    import cv2

    height, width = img.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i, j = random.randint(0, height - h), random.randint(0, width - w)
            break
    else:
        i, j, h, w = 0, 0, height, width
    crop = img[i : i + h, j : j + w]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def _view(img: np.ndarray, crop: int) -> np.ndarray:
    import cv2

    x = _random_resized_crop(img, crop)
    if random.random() < 0.8:
        x = (x * random.uniform(0.6, 1.4)).astype(np.uint8)
        m = x.mean(axis=(0, 1), keepdims=True)
        x = ((x - m) * random.uniform(0.6, 1.4) + m).astype(np.uint8)
    if random.random() < 0.2:
        x = np.repeat(x.mean(axis=2, keepdims=True), x.shape[2], axis=2).astype(np.uint8)
    if random.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), random.uniform(0.1, 2.0))
    if random.random() < 0.5:
        x = x[:, ::-1]
    x = np.ascontiguousarray(x).astype(np.float32) / 255.0
    if random.random() < 0.5:
        for c in random.sample(range(x.shape[2]), random.randint(1, 6)):
            x[:, :, c] = 0.0  # whole bands (the reference's version zeroes rows of the HWC array)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


_WORKER_STATE: dict = {}


def _init(folders, mean, std, crop):
    _WORKER_STATE.update(folders=folders, mean=mean, std=std, crop=crop)


def _item(index: int) -> int:
    s = _WORKER_STATE
    img = _load(s["folders"][index % len(s["folders"])], s["mean"], s["std"])
    v1, v2 = _view(img, s["crop"]), _view(img, s["crop"])
    return v1.shape[0] + v2.shape[0]


def reference_images_per_sec(root: str, n_images: int, workers: int, crop: int = 112) -> float:
    """Samples/s of the reference host path (load + two views) with ``workers`` processes."""
    import multiprocessing

    folders = sorted(os.path.join(root, d) for d in os.listdir(root) if d.startswith("patch_"))
    mean = np.full(13, 1500.0)
    std = np.full(13, 800.0)
    ctx = multiprocessing.get_context("spawn")  # JAX is loaded in the parent: never fork it
    with ctx.Pool(workers, initializer=_init, initargs=(folders, mean, std, crop)) as pool:
        list(pool.imap_unordered(_item, range(workers * 2)))  # warm-up: imports, first reads
        start = time.perf_counter()
        for _ in pool.imap_unordered(_item, range(n_images), chunksize=8):
            pass
        return n_images / (time.perf_counter() - start)
