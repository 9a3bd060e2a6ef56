"""The benchmark's results as the review shows them: one markdown table and one figure per experiment.

* Fig. 24 (``methods``): grouped bars, pre-training datasets x methods, linear-probe score, with the
  random-init and supervised baselines.
* Fig. 25 (``augment``): bars per augmentation arm (full pipeline, each op removed, crop only at a
  minimum scale, no crop).
* Fig. 26 (``fractions``): score vs label fraction (log axis), linear probe and fine-tuning of each
  method against supervised training from scratch.
* Fig. 27 (``transfer``): the same for an encoder pre-trained on one dataset and evaluated on another.

Scores are the primary metric of the recorded split (micro mAP for multi-label data, overall accuracy
for single-label data), averaged over seeds. Each table names its encoders; where an experiment mixes
models (ResNet and ViT methods), every row names its own (``random init, vit_s16``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from ssl4eo_jax.report import format_table

FIGURES = {"methods": "fig24_methods.png", "augment": "fig25_augment.png", "fractions": "fig26_fractions.png",
           "transfer": "fig27_transfer.png"}
TITLES = {
    "methods": "Fig. 24: linear probing of methods x pre-training datasets",
    "augment": "Fig. 25: augmentation study (linear probe)",
    "fractions": "Fig. 26: label fractions, linear probe and fine-tuning vs supervised",
    "transfer": "Fig. 27: transfer",
}
Record = dict[str, Any]


def label(r: Record, with_protocol: bool = True, with_model: bool = False) -> str:
    model = f", {r['model']}" if with_model and r.get("model") else ""
    if r["method"] == "random":
        return f"random init{model}" + (f" ({r['protocol']})" if with_protocol else "")
    if r["method"] == "supervised":
        return f"supervised (scratch){model}"
    return f"{r['method']}{model} ({r['protocol']})" if with_protocol else f"{r['method']}{model}"


def models(records: list[Record]) -> list[str]:
    """The encoders of the records, in first-seen order (none for records of before cells had one)."""
    return list(dict.fromkeys(r["model"] for r in records if r.get("model")))


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def pivot(records: list[Record], row: Callable[[Record], str], col: Callable[[Record], Any]
          ) -> tuple[list[str], list[Any], dict[tuple[str, Any], float]]:
    """Rows and columns in first-seen order and the mean score of each (row, column)."""
    rows = list(dict.fromkeys(row(r) for r in records))
    cols = list(dict.fromkeys(col(r) for r in records))
    values: dict[tuple[str, Any], list[float]] = {}
    for r in records:
        values.setdefault((row(r), col(r)), []).append(float(r["score"]))
    return rows, cols, {k: float(np.mean(v)) for k, v in values.items()}


def _layout(experiment: str, records: list[Record]) -> tuple[list[str], list[Any], dict, str, Callable]:
    """(rows, columns, values, column header, column formatter) of one experiment's table."""
    mixed = len(models(records)) > 1
    if experiment == "methods":
        rows, cols, values = pivot(records, lambda r: label(r, False, mixed), lambda r: r["target"])
        return rows, cols, values, "method", str
    if experiment == "augment":
        rows, cols, values = pivot(records, lambda r: r["aug"], lambda r: r["target"])
        return rows, cols, values, "augmentation", str
    rows, cols, values = pivot(records, lambda r: label(r, True, mixed), lambda r: r["fraction"])
    return rows, cols, values, "method (protocol)", fraction_label


def markdown(records: list[Record], preset: str) -> str:
    """One table per experiment that ran."""
    parts = [f"# Benchmark `{preset}`\n"]
    for experiment in FIGURES:
        rs = [r for r in records if r["experiment"] == experiment]
        if not rs:
            continue
        rows, cols, values, head, fmt = _layout(experiment, rs)
        metric = ", ".join(dict.fromkeys(f"{r['target']}: {r['metric']}" for r in rs))
        table = format_table([head, *(fmt(c) for c in cols)],
                             [[row, *(values.get((row, c), "-") for c in cols)] for row in rows])
        split = rs[0]["split"]
        encoders = f"; encoder: {', '.join(models(rs))}" if models(rs) else ""
        parts.append(f"## {TITLES[experiment]}\n\n{split} split; {metric}{encoders}.\n\n{table}\n")
    return "\n".join(parts)


def draw(records: list[Record], outdir: str) -> list[str]:
    """Writes the PNG of every experiment that ran; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for experiment, name in FIGURES.items():
        rs = [r for r in records if r["experiment"] == experiment]
        if not rs:
            continue
        rows, cols, values, _, fmt = _layout(experiment, rs)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        if experiment in ("methods", "augment"):
            width = 0.8 / len(rows)
            for i, row in enumerate(rows):
                xs = np.arange(len(cols)) + (i - (len(rows) - 1) / 2) * width
                ys = [values.get((row, c), np.nan) for c in cols]
                bars = ax.bar(xs, ys, width, label=row)
                ax.bar_label(bars, fmt="%.1f", fontsize=7)
            ax.set_xticks(np.arange(len(cols)), [fmt(c) for c in cols])
            ax.set_xlabel("pre-training and evaluation dataset")
        else:
            for row in rows:
                xs = [c for c in sorted(cols) if (row, c) in values]
                style = "--" if row.startswith(("supervised", "random")) else "-"
                ax.plot([100 * x for x in xs], [values[(row, x)] for x in xs], style, marker="o", label=row)
            ax.set_xscale("log")
            ax.set_xticks([100 * c for c in sorted(cols)], [fmt(c) for c in sorted(cols)])
            ax.minorticks_off()
            ax.set_xlabel("labelled training data")
            if experiment == "transfer":
                ax.set_title(f"{TITLES[experiment]}: {rs[0]['pretrain'] or ''} -> {rs[0]['target']}".replace(
                    "None", ""), fontsize=9)
        if experiment != "transfer":
            ax.set_title(TITLES[experiment], fontsize=9)
        ax.set_ylabel(f"{rs[0]['split']} score (%): " + ", ".join(dict.fromkeys(r["metric"] for r in rs)))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(outdir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
