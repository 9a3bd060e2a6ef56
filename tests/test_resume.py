"""A run killed with SIGKILL (at a random step, or while a checkpoint is written) and started again ends
exactly where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ssl4eo_jax.report import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 12, 4


def _command(workdir: str, data_dir: str) -> list[str]:
    return [
        sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/barlow.py", f"--workdir={workdir}",
        f"--config.data.dir={data_dir}", "--config.data.global_batch=32", "--config.data.workers=1",
        "--config.aug.crop_size=32", "--config.model.width=8", "--config.barlow.projector=(32, 32, 32)",
        f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", f"--config.train.checkpoint_every={EVERY}", "--config.optim.warmup_epochs=0.0",
        "--config.eval.enabled=False",
    ]


def _final_state(workdir: str):
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    return ocp.StandardCheckpointer().restore(os.path.abspath(path))


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux /proc), zombies excluded."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(name))
    return pids


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def straight(demo_dir, tmp_path_factory) -> str:
    """The work dir of an uninterrupted run, the reference of every fault test here."""
    workdir = str(tmp_path_factory.mktemp("straight") / "run")
    subprocess.run(_command(workdir, demo_dir), cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), check=True,
                   capture_output=True)
    return workdir


def test_sigkill_and_resume_matches_an_uninterrupted_run(demo_dir, straight, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_command(killed, demo_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first_ckpt = os.path.join(killed, "checkpoints", str(EVERY))
    deadline = time.time() + 300
    while not os.path.isdir(first_ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its data-loader worker
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


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_one(demo_dir, straight, tmp_path):
    """Killed while checkpoint 2*EVERY is being written (asynchronously): the half-written folder is
    never taken for a checkpoint, the run resumes from checkpoint EVERY and ends as an uninterrupted run."""
    from ssl4eo_jax.checkpoint import FAULT_ENV

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    killed = str(tmp_path / "killed")
    # Its own session, to find its Grain worker: the worker must end by itself (worker_exit.py) once
    # the run is SIGKILLed; the group is killed after in any case.
    proc = subprocess.Popen(_command(killed, demo_dir), cwd=ROOT, env=dict(env, **{FAULT_ENV: str(2 * EVERY)}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proc.wait(timeout=600)
    deadline = time.time() + 10
    while _session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    left = _session_processes(proc.pid)
    _kill_group(proc.pid)
    assert not left, f"processes of the killed run still alive 10 s after it: {left}"
    assert proc.returncode == -signal.SIGKILL
    folders = os.listdir(os.path.join(killed, "checkpoints"))
    assert str(EVERY) in folders and str(2 * EVERY) not in folders, folders
    assert any(f.startswith(f"{2 * EVERY}.") for f in folders), folders  # the write was cut short mid-way
    done = subprocess.run(_command(killed, demo_dir), cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert f"at step {EVERY}" in done.stderr

    a, b = read_metrics(os.path.join(straight, "metrics.jsonl")), read_metrics(os.path.join(killed, "metrics.jsonl"))
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(_final_state(straight)), jax.tree.leaves(_final_state(killed))):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7)
