"""Progress bars on a terminal, plain lines in a log file (no carriage returns to interleave)."""

from __future__ import annotations

import os
import subprocess
import sys

from ssl4eo_jax.progress import LineProgress, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_and_at_the_end(capsys):
    clock = FakeClock()
    bar = LineProgress(total=200, desc="pre-training barlow", unit="step", interval=30, clock=clock)
    for _ in range(100):
        clock.now += 0.5
        bar.update(1)
        bar.set_postfix(loss="0.81")
    bar.close()
    bar.close()  # idempotent, as tqdm's
    lines = capsys.readouterr().err.splitlines()
    # 50 s of updates at a 30 s interval: one line at 30 s, then the final one.
    assert lines == [
        "pre-training barlow: 60/200 step (30 %), 2 step/s, 70 s left, loss=0.81",
        "pre-training barlow: 100/200 step (50 %), 2 step/s, 50 s in all, loss=0.81",
    ]


def test_iterating_reports_the_count_of_an_iterable(capsys, monkeypatch):
    monkeypatch.setenv("SSL4EO_JAX_PROGRESS", "lines")
    assert list(progress(range(5), desc="features", unit="batch")) == [0, 1, 2, 3, 4]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("features: 5/5 batch (100 %), ")


def test_a_converter_writing_to_a_log_file_prints_lines_not_bars(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SSL4EO_JAX_PROGRESS"}
    proc = subprocess.run([sys.executable, "-m", "data_prep.demo", f"--out={tmp_path / 'd'}", "--train=16", "--val=4",
                           "--test=4", "--size=12", "--workers=1"], cwd=ROOT, env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr  # (bytes: text mode would turn a bar's carriage returns into newlines)
    stderr = proc.stderr.decode()
    assert [line.split(",")[0] for line in stderr.splitlines() if line.startswith(("train:", "val:", "test:"))] == [
        "train: 16/16 patch (100 %)", "val: 4/4 patch (100 %)", "test: 4/4 patch (100 %)"]


def test_a_training_run_sent_to_a_log_file_has_whole_lines(demo_dir, tmp_path):
    """The README's first command as ``... > log 2>&1``: absl's lines and the progress never share a line."""
    env = {k: v for k, v in os.environ.items() if k != "SSL4EO_JAX_PROGRESS"}
    proc = subprocess.run([sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/barlow.py",
                           f"--workdir={tmp_path / 'run'}", f"--config.data.dir={demo_dir}",
                           "--config.data.global_batch=32", "--config.data.workers=0", "--config.model.width=8",
                           "--config.aug.crop_size=32", "--config.barlow.projector=(32,32,32)",
                           "--config.train.steps=3", "--config.train.log_every=1", "--config.eval.enabled=False",
                           "--config.monitor.enabled=False", "--config.evals.knn.every=0"],
                          cwd=ROOT, env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert b"\r" not in proc.stderr
    lines = proc.stderr.decode().splitlines()
    progress_lines = [line.split(",")[0] for line in lines if line.startswith("pre-training barlow:")]
    assert progress_lines[-1] == "pre-training barlow: 3/3 step (100 %)"  # (and one a minute before, if slow)
    assert sum(" step 3/3 " in line for line in lines) == 1
