"""Grain worker processes end with the process that started them, even when it is SIGKILLed.

A SIGKILLed training process cannot stop its ``mp_prefetch`` workers, which would otherwise live on
(holding memory and CPU) until the user finds them. ``exit_with_parent`` is the workers'
``worker_init_fn``: a daemon thread in each worker polls its parent pid and exits the worker once
the parent is gone (the worker is then re-parented, so ``os.getppid()`` changes). Polling, not
``PR_SET_PDEATHSIG``, because that signal fires when the *thread* that forked the worker ends, and
Grain may start workers from a short-lived thread.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(0)


def exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain ``worker_init_fn``: ends this worker within ``POLL_SECONDS`` of its parent's death."""
    del worker_index, worker_count
    threading.Thread(target=_watch, args=(os.getppid(),), daemon=True, name="exit-with-parent").start()
