"""A run killed with SIGKILL and started again ends exactly where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl4eo_jax.report import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 24, 4


def _command(workdir: str, data_dir: str) -> list[str]:
    return [
        sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/barlow.py", f"--workdir={workdir}",
        f"--config.data.dir={data_dir}", "--config.data.global_batch=32", "--config.data.workers=1",
        "--config.aug.crop_size=32", "--config.barlow.projector=(64, 64, 64)", f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", f"--config.train.checkpoint_every={EVERY}", "--config.optim.warmup_epochs=0.0",
        "--config.eval.enabled=False",
    ]


def _final_state(workdir: str):
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    return ocp.StandardCheckpointer().restore(os.path.abspath(path))


def test_sigkill_and_resume_matches_an_uninterrupted_run(demo_dir, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    straight = str(tmp_path / "straight")
    subprocess.run(_command(straight, demo_dir), cwd=ROOT, env=env, check=True, capture_output=True)

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_command(killed, demo_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first_ckpt = os.path.join(killed, "checkpoints", str(EVERY))
    deadline = time.time() + 300
    while not os.path.isdir(first_ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.isdir(os.path.join(killed, "checkpoints", str(STEPS))), "the run ended before the kill"
    done = subprocess.run(_command(killed, demo_dir), cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert "Resumed from" in done.stderr

    a, b = read_metrics(os.path.join(straight, "metrics.jsonl")), read_metrics(os.path.join(killed, "metrics.jsonl"))
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(_final_state(straight)), jax.tree.leaves(_final_state(killed))):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7)
