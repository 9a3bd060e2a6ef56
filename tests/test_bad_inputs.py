"""Every bad input a user can give gets one clear line through the command line (issue 13).

Each case runs the real command (``python -m ssl4eo_jax.main``, ``.export``, ``.bench``,
``data_prep.*``) and checks: a non-zero exit, no "Traceback", one ``error:`` line naming the culprit
(file, key or value) and the fix, and nothing created or changed in the work dir or the data dir.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 4-step job compiles in half the time without LLVM's optimisations; width 8 keeps it small.
TINY_JOB = ["--config.data.global_batch=32", "--config.data.workers=0", "--config.eval.enabled=False",
            "--config.monitor.enabled=False", "--config.evals.knn.every=0", "--config.model.width=8",
            "--config.aug.crop_size=32", "--config.train.log_every=1"]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()}
    env.pop("SSL4EO_JAX_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(path: str) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and modification time."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), path)] = (stat.st_size, stat.st_mtime_ns)
    return out


def assert_one_line(proc: subprocess.CompletedProcess, *culprits: str) -> str:
    """Exit status 1, no traceback, and a last ``error:`` line that names every culprit."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for culprit in culprits:
        assert culprit in errors[0], (culprit, errors[0])
    return errors[0]


MAIN = ("ssl4eo_jax.main",)

CONFIG_CASES = {
    "missing config file": (["--config=configs/no_such_method.py"], ["configs/no_such_method.py", "barlow.py"]),
    "unknown preset": (["--config=configs/barlow.py:bigearthnett"], ["'bigearthnett'", "bigearthnet"]),
    "unknown augmentation arm": (["--config=configs/barlow.py:demo,aug=no_blurr"], ["'no_blurr'", "no_blur"]),
    "unknown config option": (["--config=configs/barlow.py:demo,augs=full"], ["'augs'"]),
    "mistyped config key": (["--config=configs/barlow.py", "--config.train.epochz=3"],
                            ["--config.train.epochz", '"epochs"']),
    "config value of the wrong type": (["--config=configs/barlow.py", "--config.train.epochs=three"],
                                       ["--config.train.epochs=three"]),
    "unknown flag": (["--config=configs/barlow.py", "--workdirr=x"], ["workdirr", "workdir"]),
    "unknown task": (["--config=configs/barlow.py", "--config.task=pretrian"], ["'pretrian'", "pretrain"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_command_line_mistakes_give_one_line(case, tmp_path):
    args, culprits = CONFIG_CASES[case]
    workdir = tmp_path / "run"
    assert_one_line(run_cli(*MAIN, *args, f"--workdir={workdir}"), *culprits)
    assert not workdir.exists()


def test_verbose_shows_the_traceback(tmp_path):
    proc = run_cli(*MAIN, "--config=configs/barlow.py:bigearthnett", f"--workdir={tmp_path / 'run'}", "--verbose")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_work_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = assert_one_line(run_cli(*MAIN, "--config=configs/barlow.py", f"--workdir={blocker}/run"), str(blocker))
    assert "--workdir" in line and blocker.read_text() == "not a folder"


def test_missing_data_dir(tmp_path):
    assert_one_line(run_cli(*MAIN, "--config=configs/barlow.py", f"--config.data.dir={tmp_path / 'nope'}",
                            f"--workdir={tmp_path / 'run'}"), str(tmp_path / "nope"))
    assert not (tmp_path / "run").exists()


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(demo_dir, tmp_path):
    """SimSiam at an absurd learning rate diverges within a few steps (step 4 at base_lr 1e12)."""
    workdir = tmp_path / "run"
    before = snapshot(demo_dir)
    proc = run_cli(*MAIN, "--config=configs/simsiam.py", f"--workdir={workdir}", f"--config.data.dir={demo_dir}",
                   *TINY_JOB, "--config.train.steps=8", "--config.train.checkpoint_every=1",
                   "--config.simsiam.projector=(32,32,32)", "--config.simsiam.predictor=(16,32)",
                   "--config.optim.base_lr=1e12")
    line = assert_one_line(proc, "at step", "config.optim.base_lr", "resumes")
    bad_step = int(line.split("at step ")[1].split(";")[0])
    good_step = int(line.split("(step ")[1].split(")")[0])
    assert good_step == bad_step - 1 >= 1
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved[-1] == good_step  # the diverged state was never checkpointed
    assert snapshot(demo_dir) == before


def test_full_disk_while_checkpointing(demo_dir, tmp_path):
    """A work dir on a 1 MiB tmpfs: the first checkpoint does not fit."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): {mounted.stderr.decode()}")
    try:
        proc = run_cli(*MAIN, "--config=configs/simsiam.py", f"--workdir={small}/run",
                       f"--config.data.dir={demo_dir}", *TINY_JOB, "--config.train.steps=4",
                       "--config.train.checkpoint_every=2", "--config.simsiam.projector=(32,32,32)",
                       "--config.simsiam.predictor=(16,32)")
        assert_one_line(proc, "no space left", str(small), "--workdir")
        assert not [d for d in os.listdir(small / "run" / "checkpoints") if d.isdigit()]  # nothing half-written
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_export_without_a_checkpoint(tmp_path):
    assert_one_line(run_cli("ssl4eo_jax.export", f"--checkpoint={tmp_path}", f"--to={tmp_path / 'w.safetensors'}"),
                    str(tmp_path))
    assert not (tmp_path / "w.safetensors").exists()


def test_export_to_an_unknown_file_type(tmp_path):
    proc = run_cli("ssl4eo_jax.export", f"--checkpoint={tmp_path}", f"--to={tmp_path / 'w.h5'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_bench_unknown_what():
    proc = run_cli("ssl4eo_jax.bench", "--what=everything")
    assert_one_line(proc, "everything")


def test_converter_on_a_missing_folder(tmp_path):
    out = tmp_path / "out"
    assert_one_line(run_cli("data_prep.eurosat", f"--src={tmp_path / 'nope'}", f"--out={out}"),
                    str(tmp_path / "nope"))
    assert not out.exists()


ARGPARSE_PROGRAMS = ("data_prep.eurosat", "data_prep.bigearthnet", "data_prep.so2sat", "data_prep.sen12ms",
                     "data_prep.tfds", "data_prep.scenes", "data_prep.ssl4eo_s12", "data_prep.verify",
                     "data_prep.inspect", "data_prep.demo", "ssl4eo_jax.export", "ssl4eo_jax.seeds_summary")


@pytest.mark.parametrize("module", ARGPARSE_PROGRAMS)
def test_argparse_mistakes_give_one_line(module):
    """An unknown argument (and, for programs with required ones, their absence) is one line that names
    the program, the argument and --help, with exit status 1; argparse's own is a usage block and 2."""
    proc = run_cli(module, "--no-such-flag=1")
    line = assert_one_line(proc, f"python -m {module}", "--help")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "required" in line or "--no-such-flag" in line, line


def test_demo_generator_into_a_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_one_line(run_cli("data_prep.demo", f"--out={blocker}/demo"), str(blocker))


def _damaged_copy(demo_dir: str, tmp_path, damage: str) -> tuple[str, str]:
    """A copy of the test dataset with its first train shard deleted or cut to half its size."""
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(demo_dir, data)
    shard = os.path.join(data, sorted(n for n in os.listdir(data) if n.startswith("train-") and
                                      n.endswith(".array_record"))[0])
    if damage == "deleted":
        os.remove(shard)
    else:
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    return data, shard


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_damaged_shard_is_refused_by_name_before_training(demo_dir, tmp_path, damage):
    data, shard = _damaged_copy(demo_dir, tmp_path, damage)
    before = snapshot(data)
    workdir = tmp_path / "run"
    proc = run_cli(*MAIN, "--config=configs/barlow.py", f"--workdir={workdir}", f"--config.data.dir={data}",
                   *TINY_JOB, "--config.train.steps=2")
    assert_one_line(proc, shard, "re-run the converter")
    assert "step 1/" not in proc.stderr  # refused before the first step
    assert snapshot(data) == before
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")

    verify = run_cli("data_prep.verify", data, "--no-progress")
    assert verify.returncode == 1 and os.path.basename(shard) in verify.stderr + verify.stdout
    assert "Traceback" not in verify.stderr
