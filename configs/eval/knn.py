"""Weighted kNN on the frozen features of an encoder (cosine similarity, ``exp(sim / T)`` votes;
multi-label: the weighted average of the neighbours' label vectors).

    python -m ssl4eo_jax.main --config=configs/eval/knn.py[:<dataset>] --config.checkpoint=RUN_OR_FILE \
        [--config.eval.knn.k=20] [--config.eval.knn.temperature=0.07] --workdir=W
"""

from ssl4eo_jax.presets.evaluation import get_eval_config


def get_config(arg: str | None = None):
    return get_eval_config("knn", arg)
