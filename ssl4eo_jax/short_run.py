"""Settings of short runs (the demo presets), derived by written rules from the run's size.

The reference settings are made for 100 epochs of ~300k patches (~120k steps at batch 256). Some of
them are sizes relative to the dataset or to the run, and break when both are 100-1000x smaller: a
MoCo queue of 65,536 keys is 16 times the demo's 4,000 patches; a key momentum of 0.999 keeps the key
encoder ~80 % at its initialisation over 219 steps; 500 SwAV prototypes are more than the batch.
The demo presets leave those settings unset (``None``) and this module derives them, once the train
split size N, the global batch B and the run length S (steps) are known, by these rules:

1. **Warm-up**: every method warms up linearly over the first ``WARMUP_FRACTION`` (10 %) of the run
   (the published 10 of 100 epochs of BYOL, SimCLR, VICReg and DINO), SGD methods included.
2. **The momentum network forgets its initialisation, and no faster**: a momentum network (MoCo's
   key encoder, BYOL's target, DINO's teacher, MoCo v3's momentum encoder) keeps the reference's base
   momentum (0.999 for MoCo, 0.996 for BYOL and DINO, 0.99 for MoCo v3) unless, over the run's S updates of its schedule, it would still hold
   more than e^-``FORGET_NATS`` (e^-3, 5 %) of its random initialisation at the end (prod_t m_t);
   then the largest base momentum that leaves exactly that much. Constant m (MoCo):
   m = exp(-3 / S), 0.9864 over 219 steps; BYOL's and DINO's cosine to 1 average half the base
   1 - m, so m ~ 1 - 6 / S, 0.9730 over 219 steps. The reference values hold from S = 3,000 (MoCo)
   and 1,500 (BYOL, DINO) steps, so no real-dataset run is touched. (Until 2026-12-02 this rule was an
   EMA horizon 1 / (1 - m) of 5 % of the run, 0.909 over 219 steps: it left e^-20 of the
   initialisation, a target almost equal to the online network, and BYOL's online kNN score on the
   val split fell from 56.8 at step 50 to 48.0 at step 219; see docs/benchmarks.md.)
3. **Queue vs dataset**: MoCo's queue K holds at most ``QUEUE_FRACTION`` (20 %) of the train split,
   as a multiple of the global batch (the reference asserts it), at least one batch: K = max(B,
   B floor(0.2 N / B)). A queue of the whole split would hold a query's own older key among its
   negatives.
4. **BN groups**: MoCo's shuffle-BN groups are the reference's per-GPU 64 examples, or a quarter of
   the global batch (the reference's 4 GPUs) when the batch is smaller than 256.
5. **Prototypes vs batch**: SwAV has at most B / 2 prototypes (the reference: 500 for a batch of 256
   would leave the Sinkhorn equipartition under-determined), and uses its queue only when the queue is
   young compared with the run: its age (queue_length / B steps) is at most ``QUEUE_MAX_AGE``
   (1 %) of the steps it is used for (the reference's 1,280 over ~100k steps: 0.005 %); the queue
   would start at 15 % of the run, the reference's epoch 15 of 100.
6. **Frozen heads**: SwAV's prototypes and DINO's last layer are frozen for the first
   ``FREEZE_FRACTION`` (1 %) of the run (SwAV's official 313 iterations, the first of ~100 epochs),
   at least one step.

``resolve`` fills every unset (``None``) value that a rule covers and returns one line per value
with its rule, which the training loop logs at start-up. Values set in a config or on the command
line are kept. The real-dataset presets set every value to the reference's and resolve nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from ssl4eo_jax.errors import ConfigError

WARMUP_FRACTION = 0.1
FORGET_NATS = 3.0
QUEUE_FRACTION = 0.2
QUEUE_MAX_AGE = 0.01
QUEUE_START_FRACTION = 0.15
FREEZE_FRACTION = 0.01
REFERENCE_BN_GROUP = 64
REFERENCE_GPUS = 4
# The reference values that rules 2, 5 and 6 never exceed.
REFERENCE = {"mocov2.momentum": 0.999, "byol.momentum": 0.996, "dino.momentum_teacher": 0.996, "mocov3.momentum": 0.99,
             "swav.prototypes": 500, "swav.queue_length": 1280}


@dataclasses.dataclass(frozen=True)
class RunSize:
    """What the rules are derived from: the train split, the global batch and the run's steps."""

    train_size: int
    global_batch: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> float:
        return self.train_size / self.global_batch

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch


def _log_kept(base: float, steps: int, schedule: str) -> float:
    """log prod_t m_t over ``steps`` updates: the log of the initialisation's share in the target."""
    if schedule == "constant":
        return steps * math.log(base) if base > 0 else -math.inf
    if schedule == "cosine":  # ssl4eo_jax.methods.targets.cosine_momentum, in float64
        t = np.arange(steps)
        return float(np.sum(np.log(1.0 + 0.5 * (base - 1.0) * (1.0 + np.cos(np.pi * t / steps)))))
    raise ConfigError(f"Unknown momentum schedule {schedule!r}; use 'constant' or 'cosine'.")


def forgetting_momentum(run: RunSize, reference: float, schedule: str) -> tuple[float, str]:
    """Rule 2: the reference base momentum, or the largest one whose schedule over the run leaves
    at most e^-FORGET_NATS of the initialisation in the momentum network."""
    steps = run.total_steps
    why = (f"the momentum network keeps <= e^-{FORGET_NATS:g} of its initialisation after the {steps} "
           f"{schedule} updates; at most the reference {reference}")
    if _log_kept(reference, steps, schedule) <= -FORGET_NATS:
        return reference, why
    lo, hi = 0.0, reference
    for _ in range(60):  # bisection: log kept share grows with the base momentum
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _log_kept(mid, steps, schedule) <= -FORGET_NATS else (lo, mid)
    return math.floor(lo * 1e6) / 1e6, why


def _momentum_rule(method: str, key: str, schedule: str) -> Callable[[RunSize, Any], tuple[Any, str]]:
    """Rule 2 for ``method.key``, with the method's ``momentum_schedule`` (``schedule`` if it has none:
    DINO's teacher always follows the cosine)."""
    path = f"{method}.{key}"

    def rule(run: RunSize, config: Any) -> tuple[Any, str]:
        chosen = str(config[method].get("momentum_schedule", schedule))
        if chosen not in ("constant", "cosine"):
            raise ConfigError(f"config.{method}.momentum_schedule={chosen!r}: use 'constant' or 'cosine'.")
        return forgetting_momentum(run, REFERENCE[path], chosen)

    return rule


def warmup_epochs(run: RunSize) -> tuple[float, str]:
    return WARMUP_FRACTION * run.epochs, f"{WARMUP_FRACTION:.0%} of the run's {run.epochs:.2f} epochs"


def moco_queue(run: RunSize) -> tuple[int, str]:
    b = run.global_batch
    k = max(b, b * int(QUEUE_FRACTION * run.train_size // b))
    return k, f"<= {QUEUE_FRACTION:.0%} of the {run.train_size} train patches, a multiple of the global batch {b}"


def moco_bn_group(run: RunSize) -> tuple[int, str]:
    b = run.global_batch
    if b >= REFERENCE_GPUS * REFERENCE_BN_GROUP:
        return REFERENCE_BN_GROUP, "the reference's 64 examples per GPU"
    if b % REFERENCE_GPUS:
        raise ConfigError(f"config.data.global_batch={b}: MoCo's shuffle-BN splits a batch under 256 into "
                          f"{REFERENCE_GPUS} groups; use a multiple of {REFERENCE_GPUS} or set config.mocov2.bn_group_size.")
    return b // REFERENCE_GPUS, f"the global batch {b} split over the reference's {REFERENCE_GPUS} GPUs"


def swav_prototypes(run: RunSize) -> tuple[int, str]:
    k = min(REFERENCE["swav.prototypes"], run.global_batch // 2)
    return k, f"<= half the global batch {run.global_batch}, at most the reference's 500"


def _queue_plan(run: RunSize) -> tuple[int, float]:
    """(queue_length, start epoch): the reference's queue (rounded to a multiple of B, as its code
    does) if young enough compared with the steps after the start, else no queue."""
    b = run.global_batch
    length = REFERENCE["swav.queue_length"] - REFERENCE["swav.queue_length"] % b
    start = QUEUE_START_FRACTION * run.epochs
    steps_used = run.total_steps * (1 - QUEUE_START_FRACTION)
    if length <= 0 or length / b > QUEUE_MAX_AGE * steps_used:
        return 0, start
    return length, start


def swav_queue_length(run: RunSize) -> tuple[int, str]:
    length, _ = _queue_plan(run)
    age = REFERENCE["swav.queue_length"] / run.global_batch
    return length, (f"the reference's 1280 only if its age ({age:.1f} steps) is <= {QUEUE_MAX_AGE:.0%} of the "
                    f"{run.total_steps * (1 - QUEUE_START_FRACTION):.0f} steps after its start; 0: no queue")


def swav_queue_start(run: RunSize) -> tuple[float, str]:
    _, start = _queue_plan(run)
    return round(start, 4), f"{QUEUE_START_FRACTION:.0%} of the run (the reference's epoch 15 of 100)"


def frozen_steps(run: RunSize) -> tuple[int, str]:
    return max(1, int(round(FREEZE_FRACTION * run.total_steps))), f"{FREEZE_FRACTION:.0%} of the {run.total_steps} steps"


def frozen_epochs(run: RunSize) -> tuple[float, str]:
    steps, why = frozen_steps(run)
    return steps / run.steps_per_epoch, f"{steps} step(s): {why}"


def _size_rule(rule: Callable[[RunSize], tuple[Any, str]]) -> Callable[[RunSize, Any], tuple[Any, str]]:
    return lambda run, config: rule(run)


# Each rule gets the run's size and the config (the momentum rules read their method's schedule).
RULES: dict[str, Callable[[RunSize, Any], tuple[Any, str]]] = {
    "optim.warmup_epochs": _size_rule(warmup_epochs),
    "mocov2.queue_size": _size_rule(moco_queue),
    "mocov2.momentum": _momentum_rule("mocov2", "momentum", "constant"),
    "mocov2.bn_group_size": _size_rule(moco_bn_group),
    "byol.momentum": _momentum_rule("byol", "momentum", "cosine"),
    "dino.momentum_teacher": _momentum_rule("dino", "momentum_teacher", "cosine"),
    "mocov3.momentum": _momentum_rule("mocov3", "momentum", "cosine"),
    "dino.freeze_last_layer": _size_rule(frozen_epochs),
    "swav.prototypes": _size_rule(swav_prototypes),
    "swav.queue_length": _size_rule(swav_queue_length),
    "swav.epoch_queue_starts": _size_rule(swav_queue_start),
    "swav.freeze_prototypes_niters": _size_rule(frozen_steps),
}


def _get(config: Any, path: str) -> tuple[bool, Any]:
    node = config
    *parents, leaf = path.split(".")
    for part in parents:
        if part not in node:
            return False, None
        node = node[part]
    return (leaf in node), (node[leaf] if leaf in node else None)


def _set(config: Any, path: str, value: Any) -> None:
    node = config
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


def resolve(config: Any, run: RunSize) -> list[str]:
    """Fills the unset values of ``config`` that a rule covers; one line per derived value."""
    lines = []
    for path, rule in RULES.items():
        present, value = _get(config, path)
        if present and value is None:
            derived, why = rule(run, config)
            _set(config, path, derived)
            lines.append(f"{path} = {derived:g} ({why})" if isinstance(derived, float) else f"{path} = {derived} ({why})")
    return lines


def unresolved(config: Any) -> list[str]:
    """The rule-covered values that are still unset."""
    return [path for path in RULES if _get(config, path) == (True, None)]
