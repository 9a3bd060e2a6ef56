"""Runs a benchmark preset: every cell's pre-training (shared between cells that need the same
encoder) and evaluation, each in its own directory, then the results table and figures.

Layout of the work directory::

    pretrain/<method>_<dataset>_<aug>_s<seed>/   a pre-training run (train.run; checkpoints, results.json)
    cells/<eval id>/eval/                        the evaluation (evaluate.run; checkpoints when it trains)
    cells/<eval id>/cell.json                    written when the cell is done: cell, config, seed,
                                                 checkpoint, wall time, metrics
    results.json, results.md, fig24_methods.png, fig25_augment.png, fig26_fractions.png, fig27_transfer.png

Re-running skips cells with a ``cell.json`` and resumes the others (pre-trainings and fine-tunings
from their checkpoints). Cells of different experiments with the same evaluation share one directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax

from ssl4eo_jax import evaluate, train
from ssl4eo_jax.benchmark import figures
from ssl4eo_jax.benchmark.cell_configs import eval_config, pretrain_config
from ssl4eo_jax.benchmark.grid import Cell, datasets_used, expand
from ssl4eo_jax.data.datasets import CONVERTERS
from ssl4eo_jax.data.manifest import MANIFEST_NAME, DatasetError
from ssl4eo_jax.progress import progress
from ssl4eo_jax.report import write_json
from ssl4eo_jax.tensorboard_events import write_grid_events


def check_data(config: Any, datasets: list[str]) -> None:
    """Every real dataset of the grid needs ``config.data.dirs.<name>`` pointing at a converted copy."""
    for name in datasets:
        if name.startswith("demo"):
            continue
        path = config.data.dirs.get(name)
        if path and os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            continue
        where = f"{path} holds no {MANIFEST_NAME}" if path else f"config.data.dirs.{name} is not set"
        raise DatasetError(
            f"The benchmark needs the {name} dataset, but {where}. Convert the archive with `python -m "
            f"data_prep.{CONVERTERS.get(name, name)} --src <archive dir> --out <dir>` and pass "
            f"--config.data.dirs.{name}=<dir>.")


def _same_config(path: str, config_dict: dict[str, Any]) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == json.loads(json.dumps(config_dict))


def ensure_pretrained(config: Any, cell: Cell, workdir: str) -> tuple[str, dict[str, Any]]:
    """The cell's pre-training directory, trained (or resumed) unless a finished run is there."""
    run_dir = os.path.join(workdir, "pretrain", cell.pretrain_id)
    cfg = pretrain_config(config, cell)
    results_path = os.path.join(run_dir, "results.json")
    if os.path.isfile(results_path) and _same_config(os.path.join(run_dir, "config.json"), cfg.to_dict()):
        with open(results_path) as f:
            results = json.load(f)
    else:
        logging.info("Pre-training %s (%s) on %s (aug %s, seed %d) in %s", cell.method, cell.model, cell.pretrain,
                     cell.aug, cell.seed, run_dir)
        results = train.run(cfg, run_dir)
    info = {"run_dir": run_dir, "wall_seconds": results["wall_seconds"], "steps": results["steps"],
            "epochs": results["epochs"], "final_loss": results["final_metrics"].get("loss"),
            "config": cfg.to_dict()}
    return run_dir, info


def run_cell(config: Any, cell: Cell, workdir: str) -> tuple[dict[str, Any], bool]:
    """The cell's record, and whether it ran now (False: finished before)."""
    cell_dir = os.path.join(workdir, "cells", cell.eval_id)
    path = os.path.join(cell_dir, "cell.json")
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        record.setdefault("model", cell.model)  # recorded before cells had a model
        return record, False
    began = time.time()
    checkpoint, pretrain = "random", None
    if cell.pretrain:
        checkpoint, pretrain = ensure_pretrained(config, cell, workdir)
    cfg = eval_config(config, cell, checkpoint)
    results = evaluate.run(cfg, os.path.join(cell_dir, "eval"), progress=False)
    split = config.metric_split if config.metric_split in results["metrics"] else "val"
    record = {
        **dataclasses.asdict(cell), "eval_id": cell.eval_id, "pretrain_id": cell.pretrain_id,
        "checkpoint": checkpoint, "metric": "micro mAP %" if results["multi_label"] else "OA %",
        "split": split, "score": results["metrics"][split]["primary"], "metrics": results["metrics"],
        "train_size": results["train_size"], "band_map": results["band_map"],
        "wall_seconds": time.time() - began, "eval_seconds": results["wall_seconds"],
        "pretrain": pretrain, "config": {"eval": cfg.to_dict()}, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if jax.process_index() == 0:
        write_json(path, record)
    return record, True


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the preset's grid; writes results.json, results.md and the figures."""
    began = time.time()
    os.makedirs(workdir, exist_ok=True)
    cells = expand(config)
    check_data(config, datasets_used(cells))
    logging.info("Benchmark %s: %d cells in %s", config.preset, len(cells), workdir)
    records, ran, shared, seen = [], 0, 0, set()
    bar = progress(cells, desc=f"benchmark {config.preset}", unit="cell", disable=jax.process_index() != 0)
    for cell in bar:
        bar.set_postfix_str(f"{cell.experiment}: {cell.eval_id}")
        record, fresh = run_cell(config, cell, workdir)
        ran += fresh
        reused = not fresh and cell.eval_id in seen  # the same evaluation in another experiment of this grid
        shared += reused
        seen.add(cell.eval_id)
        logging.info("Cell %s/%s: %s %.2f (%s, %.0f s%s)", cell.experiment, cell.eval_id, record["metric"],
                     record["score"], record["split"], record["wall_seconds"],
                     "" if fresh else ", shared" if reused else ", finished before")
        records.append({**record, "experiment": cell.experiment})
    results = {"preset": config.preset, "cells": records, "ran_cells": ran, "skipped_cells": len(cells) - ran,
               "shared_cells": shared,
               "wall_seconds": time.time() - began, "config": config.to_dict()}
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "results.json"), results)
        markdown = figures.markdown(records, config.preset)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(markdown)
        results["figures"] = figures.draw(records, workdir)
        write_grid_events(workdir, records, markdown, results["figures"])
        print(f"\n{markdown}\nBenchmark {config.preset}: {ran} cells run, {shared} shared "
              f"between experiments, {len(cells) - ran - shared} finished before, "
              f"{results['wall_seconds']:.0f} s; results in {os.path.abspath(workdir)}")
    return results
