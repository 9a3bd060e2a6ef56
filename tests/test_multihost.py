"""Two processes on localhost (Gloo collectives on CPU) train like one process with the same
global batch: both report identical losses, equal to the single-process run."""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from ssl4eo_jax.report import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _command(workdir: str, data_dir: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/barlow.py", f"--workdir={workdir}",
        f"--config.data.dir={data_dir}", "--config.data.global_batch=32", "--config.data.workers=0",
        "--config.aug.crop_size=32", "--config.model.width=8",
        "--config.barlow.projector=(32, 32, 32)", f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.optim.warmup_epochs=0.0",
        "--config.eval.enabled=False", "--config.train.log_all_processes=True", *extra,
    ]


def _why(output: str) -> str:
    """The lines that explain a failed process (the first fatal or error lines), then its tail."""
    lines = output.splitlines()
    key = [ln for ln in lines if re.search(r"^[EF]\d{4} |Error|error:|Terminating|fatal", ln)][:20]
    return "\n".join(key + ["..."] + lines[-30:])


@pytest.mark.multiprocess
def test_two_processes_match_one_process(demo_dir, tmp_path):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", PYTHONUNBUFFERED="1")
    single = str(tmp_path / "single")
    subprocess.run(_command(single, demo_dir), cwd=ROOT, env=dict(env, JAX_NUM_CPU_DEVICES="4"), check=True,
                   capture_output=True)

    multi = str(tmp_path / "multi")
    port = _free_port()
    procs = [
        subprocess.Popen(
            _command(multi, demo_dir, "--config.distributed=explicit", f"--config.cluster.coordinator=localhost:{port}",
                     "--config.cluster.num_processes=2", f"--config.cluster.process_id={i}"),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, _why(out)
    assert "process 1 of 2, 2 local / 4 global devices" in outputs[1]

    ref = [r["loss"] for r in read_metrics(os.path.join(single, "metrics.jsonl"))]
    p0 = [r["loss"] for r in read_metrics(os.path.join(multi, "metrics.jsonl"))]
    p1 = [r["loss"] for r in read_metrics(os.path.join(multi, "metrics.process1.jsonl"))]
    assert len(ref) == len(p0) == len(p1) == STEPS
    assert p0 == p1  # the same replicated values on both processes
    # The same examples with the same augmentation: the first steps agree to float rounding. The two
    # layouts sum the global batch in a different order (process-major), and the tiny test model
    # amplifies that rounding about tenfold per step, so later steps get a looser bound.
    np.testing.assert_allclose(p0[:2], ref[:2], rtol=1e-5)
    np.testing.assert_allclose(p0, ref, rtol=3e-3)
    # Every process wrote its own data-iterator state into the checkpoint.
    data = os.listdir(os.path.join(multi, "checkpoints", str(STEPS), "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data)


def test_checkpoint_managers_of_one_run_have_their_own_barriers(tmp_path):
    """Orbax names its cross-process barriers after the step (``async_write_complete.4``). The run's
    two managers (``checkpoints`` and the monitor's ``checkpoints_best``) save the same steps, so
    without a prefix of their own they shared barriers: a process passed one before the other had
    written its part ("ArrayMetadata Store contains metadata from just one process"), or the
    coordinator refused it ("Barrier _async_write_complete.4 is already ongoing"), in 2 of 9
    two-process runs on a 2-core Xeon."""
    from orbax.checkpoint._src.multihost import multihost

    from ssl4eo_jax.checkpoint import Checkpointer

    managers = [Checkpointer(str(tmp_path)), Checkpointer(str(tmp_path), keep=1, subdir="checkpoints_best")]
    keys = [multihost.unique_barrier_key("async_write_complete", suffix="4",
                                         prefix=c.manager._multiprocessing_options.barrier_sync_key_prefix)
            for c in managers]
    for c in managers:
        c.close()
    assert keys == ["checkpoints_async_write_complete.4", "checkpoints_best_async_write_complete.4"]
