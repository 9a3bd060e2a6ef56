"""Faults survived (issue 13): a converter killed mid-shard and re-run writes byte-identical shards; one
process of a two-process run killed stops the other with a message, and both resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ssl4eo_jax.data.writer import FAULT_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(out: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_prep.demo", f"--out={out}", "--train=40", "--val=8", "--test=8", "--size=12",
           "--records-per-shard=8", "--workers=1", "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def _contents(out: str) -> dict[str, bytes]:
    """Every shard, ids file and the manifest (the sidecars hold file dates, which differ by design)."""
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))
            if not name.endswith(".meta.json")}


def test_converter_killed_mid_shard_and_rerun_writes_identical_shards(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert _demo(straight).returncode == 0
    proc = _demo(killed, **{FAULT_ENV: "19"})  # the 3rd record of the 3rd train shard
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = sorted(os.listdir(killed))
    assert "train-00002-of-00005.array_record.tmp" in left and "train-00002-of-00005.array_record" not in left
    assert "train-00001-of-00005.array_record" in left and "manifest.json" not in left
    rerun = _demo(killed)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    a, b = _contents(straight), _contents(killed)
    assert sorted(a) == sorted(b) and all(name.endswith((".array_record", ".txt", ".json")) for name in b)
    assert [name for name in a if a[name] != b[name]] == []


def _two_process_command(workdir: str, data_dir: str, port: int, pid: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/barlow.py", f"--workdir={workdir}",
            f"--config.data.dir={data_dir}", "--config.data.global_batch=32", "--config.data.workers=0",
            "--config.aug.crop_size=32", "--config.model.width=8", "--config.barlow.projector=(32,32,32)",
            f"--config.train.steps={steps}", "--config.train.log_every=1", "--config.train.checkpoint_every=4",
            "--config.eval.enabled=False", "--config.monitor.enabled=False",
            "--config.evals.knn.every=0", "--config.distributed=explicit",
            f"--config.cluster.coordinator=localhost:{port}", "--config.cluster.num_processes=2",
            f"--config.cluster.process_id={pid}", "--config.cluster.heartbeat_seconds=30"]


def _start_two(workdir: str, data_dir: str, steps: int) -> list[subprocess.Popen]:
    from test_multihost import _free_port

    port = _free_port()
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", PYTHONUNBUFFERED="1")
    return [subprocess.Popen(_two_process_command(workdir, data_dir, port, pid, steps), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for pid in range(2)]


@pytest.mark.multiprocess
def test_killing_one_of_two_processes_stops_the_other_with_a_message_and_both_resume(demo_dir, tmp_path):
    """Process 1 is killed after checkpoint 8: process 0 exits with one line within a minute (not after
    jax.distributed's heartbeat timeout and an abort), and the two restarted processes resume."""
    workdir = str(tmp_path / "run")
    procs = _start_two(workdir, demo_dir, steps=400)
    deadline = time.time() + 600
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "8")) and time.time() < deadline:
        assert procs[0].poll() is None and procs[1].poll() is None, procs[0].stderr.read()[-3000:]
        time.sleep(0.1)
    procs[1].kill()
    killed_at = time.time()
    stderr = procs[0].communicate(timeout=240)[1]
    waited = time.time() - killed_at
    procs[1].communicate()
    # When the survivor is inside a Gloo collective, the collective fails at once and it exits with our
    # one line. When it is blocked elsewhere (e.g. a device_get), jax.distributed's coordination service
    # aborts it after its heartbeat timeout (config.cluster.heartbeat_seconds, 30 s here) with
    # "Terminating process ... another task died".
    if procs[0].returncode == 1:
        assert waited < 60, waited
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "another process" in errors[0] and "Traceback" not in stderr, stderr[-3000:]
    else:
        assert procs[0].returncode == -signal.SIGABRT and "another task died" in stderr, stderr[-3000:]
        assert waited < 130, waited

    restarted = _start_two(workdir, demo_dir, steps=10)
    outputs = [p.communicate(timeout=600)[1] for p in restarted]
    for p, out in zip(restarted, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "Resumed from" in out
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)) and steps[-1] == 10
