"""Summary and preview of a converted dataset: ``python -m data_prep.inspect DIR [--split train]``.

Prints the manifest summary (source, bands and their train mean/std, dtype, shape, classes, split
sizes, skipped/filtered counts) and writes a PNG grid of a few patches, RGB from B04/B03/B02 with a
2-98 % percentile stretch per patch (the first band in grey when there is no RGB; the first date of a
multi-date record), titled with each patch's id and labels.
"""

from __future__ import annotations

import os

import numpy as np

from ssl4eo_jax.data import open_split
from ssl4eo_jax.data.manifest import Manifest, load_manifest
from ssl4eo_jax.errors import OneLineArgumentParser

RGB = ("B04", "B03", "B02")


def summary(manifest: Manifest) -> str:
    raw = manifest.raw
    lines = [
        f"{manifest.root}: {manifest.dataset} (converter {raw.get('converter')} v{raw.get('converter_version')})",
        f"  source: {raw.get('source')}",
        f"  records: {raw['dtype']} {list(manifest.shape)}"
        + (f" (time axis {raw['time_axis']}, {raw.get('seasons')} dates)" if "time_axis" in raw else ""),
        "  splits: " + ", ".join(f"{name} {entry['size']}" for name, entry in manifest.splits.items()),
        f"  band statistics over the {raw['band_stats']['split']} split:",
    ]
    lines += [f"    {b:>14} mean {m:12.4f}  std {s:12.4f}" for b, m, s in zip(manifest.bands, manifest.mean, manifest.std)]
    kind = "multi-label" if manifest.multi_label else "single-label"
    lines.append(f"  classes ({manifest.num_classes}, {kind}; records carry {list(manifest.label_kinds)}):")
    lines += [f"    {i:2d} {name}" for i, name in enumerate(manifest.classes)]
    for key in ("skipped", "filtered"):
        if raw.get(key, {}).get("count"):
            lines.append(f"  {key}: {raw[key]['count']} (see {raw[key]['file']})")
    if "resampling" in raw:
        lines.append(f"  resampling: {raw['resampling']}")
    return "\n".join(lines)


def to_rgb(image: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] from B04/B03/B02 (or the first band), 2-98 % stretched."""
    channels = [bands.index(b) for b in RGB] if all(b in bands for b in RGB) else [0, 0, 0]
    rgb = image[..., channels].astype(np.float64)
    low, high = np.nanpercentile(rgb, 2), np.nanpercentile(rgb, 98)
    return np.clip((rgb - low) / max(high - low, 1e-12), 0, 1)


def label_text(item: dict, manifest: Manifest) -> str:
    names = manifest.classes
    if manifest.multi_label or "single" not in manifest.label_kinds:
        picked = [names[i] for i in np.flatnonzero(item["multi_hot"])]
        return ", ".join(picked) if picked else "(no label)"
    return names[int(item["label"])] if int(item["label"]) >= 0 else "(no label)"


def preview(root: str, split: str, count: int, path: str, seed: int = 0) -> str:
    """Writes a grid of ``count`` random patches of ``split`` to ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = open_split(root, split)
    picks = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(count, len(ds)), replace=False))
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), picks):
        item = ds[int(index)]
        image = item["image"][0] if "time_axis" in ds.manifest.raw else item["image"]
        ax.imshow(to_rgb(image, ds.manifest.bands))
        text = label_text(item, ds.manifest) if ds.manifest.classes else ""
        ax.set_title(f"{item['id'][-28:]}\n{text[:40]}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="python -m data_prep.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="a converted dataset directory")
    parser.add_argument("--split", default=None, help="split to preview (default: train, else the first)")
    parser.add_argument("--count", type=int, default=16, help="patches in the preview grid")
    parser.add_argument("--png", default=None, help="preview file (default: DIR/preview-<split>.png)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.dir)
    print(summary(manifest))
    split = args.split or ("train" if "train" in manifest.splits else next(iter(manifest.splits)))
    path = preview(args.dir, split, args.count, args.png or os.path.join(args.dir, f"preview-{split}.png"))
    print(f"preview of {split}: {path}")


if __name__ == "__main__":
    from data_prep.convert import main_guard

    main_guard(main)
