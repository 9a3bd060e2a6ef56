"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow needed).

A run's work directory holds its event files next to ``metrics.jsonl``, so ``tensorboard --logdir
runs`` shows every run under ``runs/``: the logged scalars (``train/loss``, its terms, ``train/lr``,
``train/images_per_sec``, embedding std and effective rank, ``train/knn_monitor``), the final
evaluation (``eval/pretrained/...``, ``eval/random_init/...``), the config and the results table as
text, and at step 0 an image grid of augmented view pairs (an RGB composite of B04/B03/B02).

On resume the writer purges what a killed run logged after the restored checkpoint (TensorBoard's
``purge_step``), so the curves read as one run without duplicate steps, as ``metrics.jsonl`` does.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

RGB_BANDS = ("B04", "B03", "B02")


def flatten_numbers(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict as ``{"a/b/c": value}`` (bools, strings, lists and NaN skipped)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, tag))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            if math.isfinite(float(value)):
                out[tag] = float(value)
    return out


def rgb_composite(images: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """(N, H, W, C) reflectances -> (N, H, W, 3) uint8 true colour (B04/B03/B02, else the first three
    bands), each image stretched between its own 2nd and 98th percentile."""
    picks = [list(bands).index(b) for b in RGB_BANDS] if set(RGB_BANDS) <= set(bands) else [0, 1, 2][: images.shape[-1]]
    rgb = np.asarray(images, np.float32)[..., picks]
    if rgb.shape[-1] < 3:  # fewer than three bands: grey
        rgb = np.repeat(rgb[..., :1], 3, axis=-1)
    low = np.percentile(rgb, 2, axis=(1, 2, 3), keepdims=True)
    high = np.percentile(rgb, 98, axis=(1, 2, 3), keepdims=True)
    return (np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1) * 255).round().astype(np.uint8)


def view_grid(views: Sequence[np.ndarray], bands: Sequence[str], pad: int = 2) -> np.ndarray:
    """One (H, W, 3) uint8 grid: a row per example, a column per view, white padding between. Views of
    different sizes (local views) are placed top-left in cells of the largest size."""
    tiles = [rgb_composite(v, bands) for v in views]
    n = tiles[0].shape[0]
    cell = max(t.shape[1] for t in tiles)
    grid = np.full((n * (cell + pad) + pad, len(tiles) * (cell + pad) + pad, 3), 255, np.uint8)
    for col, tile in enumerate(tiles):
        for row in range(n):
            y, x = pad + row * (cell + pad), pad + col * (cell + pad)
            grid[y:y + tile.shape[1], x:x + tile.shape[2]] = tile[row]
    return grid


class EventLog:
    """The run's TensorBoard events; a no-op when ``enabled`` is False (other processes, or
    ``config.train.tensorboard=False``)."""

    def __init__(self, logdir: str, resume_step: int = 0, enabled: bool = True):
        self.logdir = logdir
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported here: only process 0 writes events

            # purge_step: events a killed run wrote after the restored checkpoint are hidden.
            self.writer = SummaryWriter(logdir, purge_step=resume_step + 1 if resume_step else None,
                                        flush_secs=30)

    def scalars(self, step: int, record: Mapping[str, Any], prefix: str = "train") -> None:
        """Every finite number of ``record`` (except the step itself) as ``<prefix>/<name>``."""
        if self.writer is None:
            return
        for tag, value in flatten_numbers({k: v for k, v in record.items() if k != "step"}, prefix).items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown, step)

    def config(self, config: Mapping[str, Any]) -> None:
        """The config as indented JSON (TensorBoard's text tab renders it as a code block)."""
        self.text("config", "    " + json.dumps(config, indent=2, sort_keys=True, default=str).replace("\n", "\n    "))

    def image(self, tag: str, image: np.ndarray, step: int = 0) -> None:
        """One (H, W, 3) uint8 image."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def augmented_view_grid(source: Any, aug_cfg: Any, key: Any, mean: np.ndarray, std: np.ndarray,
                        examples: int = 4) -> np.ndarray:
    """The grid of every view of the first ``examples`` train records, made by the training
    augmentation (``augment.make_views``) with the step-0 key, shown in reflectance units."""
    import jax
    import jax.numpy as jnp

    from ssl4eo_jax import augment

    n = min(examples, len(source))
    records = [source[i] for i in range(n)]
    images = np.stack([np.asarray(r["image"], np.float32) for r in records])
    index = jnp.arange(n, dtype=jnp.int32)
    mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)

    @jax.jit
    def views(images: jax.Array) -> list[jax.Array]:
        return [v * std_j + mean_j for v in augment.make_views(key, images, index, aug_cfg, mean_j, std_j)]

    out = [np.asarray(v) for v in views(jnp.asarray(images))]
    if images.ndim == 5:  # several dates per record: the first date stands for the original
        images = images[:, 0]
    return view_grid([images, *out], source.manifest.bands)


def grid_tag(record: Mapping[str, Any]) -> str:
    """A grid cell's scalar tag: ``grid/<experiment>/<evaluation>/OA`` (or ``.../micro_mAP``)."""
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", f"grid/{record['experiment']}/{record['eval_id']}/{record['metric']}").strip("_")


def write_grid_events(workdir: str, records: Sequence[Mapping[str, Any]], markdown: str,
                      figure_paths: Sequence[str]) -> None:
    """The benchmark grid's results as TensorBoard events in its work dir: one scalar per cell
    (``grid/<experiment>/<evaluation>/OA`` or ``.../micro_mAP``), the results table as text and each figure as an
    image. The grid's own event files are rewritten, so they always show its latest results.json."""
    import glob
    import os

    import matplotlib.image

    for old in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        os.remove(old)
    log = EventLog(workdir)
    for r in records:
        log.writer.add_scalar(grid_tag(r), float(r["score"]), 0)
    log.text("results", markdown)
    for path in figure_paths:
        rgba = matplotlib.image.imread(path)
        log.image(os.path.splitext(os.path.basename(path))[0], (rgba[..., :3] * 255).round().astype(np.uint8))
    log.close()
