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
