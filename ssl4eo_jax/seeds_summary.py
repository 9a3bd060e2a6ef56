"""Mean +/- std over seeds of pre-training jobs: ``python -m ssl4eo_jax.seeds_summary RUN_DIR...``.

Reads each run directory's ``results.json`` (written by ``python -m ssl4eo_jax.main``), groups the
runs by method, and prints one Markdown row per method: pre-trained and random-init kNN and linear
probe on the test split (the primary metric: OA % or micro mAP %), as mean +/- sample std over the
seeds, and whether the pre-trained encoder beats random init on both protocols in every seed. With
``--out FILE.json`` the per-seed values and the statistics are also written as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from ssl4eo_jax.report import format_table, write_json
from ssl4eo_jax.errors import OneLineArgumentParser

PROTOCOLS = (("pretrained", "knn"), ("pretrained", "linear"), ("random_init", "knn"), ("random_init", "linear"))


def load_runs(run_dirs: Sequence[str], split: str = "test") -> dict[str, list[dict[str, Any]]]:
    """method -> one entry per run: its seed and the four primary metrics on ``split``."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "results.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished pre-training run?")
        with open(path) as f:
            results = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            seed = json.load(f)["seed"]
        if "pretrained" not in results:
            raise ValueError(f"{path} has no evaluation (config.eval.enabled was False).")
        entry = {"run": run_dir, "seed": seed, "steps": results["steps"], "eval_bn": results.get("eval_bn")}
        for which, protocol in PROTOCOLS:
            entry[f"{which}_{protocol}"] = results[which][protocol][split]["primary"]
        runs[results["method"]].append(entry)
    return runs


def mean_std(values: Sequence[float]) -> str:
    values = np.asarray(values, np.float64)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} +/- {std:.1f}"


def summary(runs: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The Markdown table and its JSON form."""
    header = ["method", "seeds", "kNN", "linear", "random-init kNN", "random-init linear", "beats random (kNN and linear, every seed)"]
    rows, out = [], {}
    for method, entries in runs.items():
        cols = {f"{w}_{p}": [e[f"{w}_{p}"] for e in entries] for w, p in PROTOCOLS}
        beats = all(e["pretrained_knn"] > e["random_init_knn"] and e["pretrained_linear"] > e["random_init_linear"]
                    for e in entries)
        rows.append([method, ",".join(str(e["seed"]) for e in entries),
                     *(mean_std(cols[f"{w}_{p}"]) for w, p in PROTOCOLS), "yes" if beats else "no"])
        out[method] = {"runs": entries, "beats_random_every_seed": beats,
                       **{k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                          for k, v in cols.items()}}
    return format_table(header, rows), out


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="python -m ssl4eo_jax.seeds_summary", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with results.json and config.json)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="also write the per-seed values and statistics to this JSON file")
    args = parser.parse_args(argv)
    try:
        table, data = summary(load_runs(args.runs, args.split))
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(table)
    if args.out:
        write_json(args.out, data)


if __name__ == "__main__":
    main()
