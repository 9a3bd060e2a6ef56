"""Results files and tables: ``metrics.jsonl``, ``results.json`` and the printed summary."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        return np.asarray(value).tolist()
    return value


def write_json(path: str, data: Any) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(data), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step. On resume, entries after the restored
    step (logged by a run that died before its next checkpoint) are dropped, so the file reads as
    one uninterrupted run."""

    def __init__(self, path: str, resume_step: int = 0, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash
                    if record.get("step", 0) <= resume_step:
                        kept.append(line)
        with open(path, "w") as f:
            f.writelines(line + "\n" for line in kept)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in header]] + [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def summary_table(results: dict[str, Any], split: str = "test") -> str:
    """method | kNN | linear | random-init kNN | random-init linear, on ``split``'s primary metric."""
    pre, rand = results["pretrained"], results["random_init"]
    metric = "OA %" if pre["task"] == "single_label" else "micro mAP %"
    header = ["method", f"kNN ({metric})", f"linear ({metric})", "random-init kNN", "random-init linear"]
    row = [
        results["method"], pre["knn"][split]["primary"], pre["linear"][split]["primary"],
        rand["knn"][split]["primary"], rand["linear"][split]["primary"],
    ]
    return format_table(header, [row])


def end_summary(results: dict[str, Any], workdir: str, split: str | None, profile_dir: str | None = None,
                events: bool = True) -> str:
    """The one-screen summary printed at the end of a run: what ran, how fast, the evaluation table
    and where every result lies."""
    where = os.path.abspath(workdir)
    last = results.get("final_metrics") or {}
    ips = results.get("train_images_per_sec")
    lines = [
        "=" * 100,
        f"{results['method']} on {results['dataset']}: {results['steps']} steps ({results['epochs']:.1f} epochs) at "
        f"global batch {results['global_batch']} on {results['devices']} {results['platform']} device(s), "
        f"{results['processes']} process(es)" + (f", resumed from step {results['resumed_from']}"
                                                 if results.get("resumed_from") else ""),
        f"  time      {results['wall_seconds']:.0f} s in all, compiled in {results['compile_seconds']:.1f} s"
        + (f", {ips:.1f} images/s while training" if ips else ""),
        f"  loss      {last['loss']:.5g} at the last step" if "loss" in last else "  loss      (not logged)",
    ]
    if results.get("stopped_on_collapse"):
        lines.append("  STOPPED: the embeddings collapsed (see metrics.jsonl's embedding_std)")
    if split and "pretrained" in results:
        lines += [f"  frozen-encoder evaluation, {split} split, BN statistics {results.get('eval_bn', '')}:", "",
                  summary_table(results, split), ""]
    lines += [f"  files in  {where}", "    results.json, results.md   the evaluation and the run's facts",
              "    metrics.jsonl              every logged step",
              "    checkpoints/               the same command resumes from the last one"]
    if events:
        lines.append(f"    events.out.tfevents.*      tensorboard --logdir {where}")
    if profile_dir:
        lines.append(f"    {os.path.relpath(profile_dir, where) + '/':<26} the jax.profiler trace")
    lines.append("=" * 100)
    return "\n".join(lines)
