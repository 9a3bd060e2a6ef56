"""Linear probe of a frozen encoder on a target dataset.

    python -m ssl4eo_jax.main --config=configs/eval/linear.py[:<dataset>] --config.checkpoint=RUN_OR_FILE \
        [--config.data.dir=DIR] [--config.eval.label_fraction=0.1] [--config.eval.protocol=reference] --workdir=W

``protocol="ours"`` (default): features of the centre view extracted once, standardised, and a
linear layer trained on the device with AdamW + cosine, its weight decay chosen on the val split
(``ssl4eo_jax.evaluators.linear``). Multi-label data: sigmoid/BCE, else softmax/CE.
``protocol="reference"``: the review's protocol (``*_LC.py``): augmented inputs through the frozen
encoder with BatchNorm in train mode, SGD momentum 0.9 without weight decay, step decay x0.1 at
``config.train.optim.milestones``, lr per dataset from REFERENCE_SETTINGS.md 1.7
(``config.train``); set ``config.eval.per_batch_metric=True`` to average the metric over batches
as the reference reports it. Metrics on the val and test splits, computed over the whole split.
"""

from ssl4eo_jax.presets.evaluation import get_eval_config


def get_config(arg: str | None = None):
    return get_eval_config("linear", arg)
