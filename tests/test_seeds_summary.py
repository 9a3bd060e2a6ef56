"""``python -m ssl4eo_jax.seeds_summary``: mean +/- std over seeds from results.json files."""

import json

import numpy as np
import pytest

from ssl4eo_jax import seeds_summary


def _run(tmp_path, method, seed, pre, rand):
    run = tmp_path / f"{method}_{seed}"
    run.mkdir()
    results = {"method": method, "steps": 10, "eval_bn": "re-estimated",
               "pretrained": {p: {"test": {"primary": v}} for p, v in zip(("knn", "linear"), pre)},
               "random_init": {p: {"test": {"primary": v}} for p, v in zip(("knn", "linear"), rand)}}
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.json").write_text(json.dumps({"seed": seed}))
    return str(run)


def test_mean_std_over_seeds_and_the_beats_random_column(tmp_path, capsys):
    runs = [_run(tmp_path, "barlow", s, (60 + s, 70 + 2 * s), (55, 56)) for s in range(3)]
    runs.append(_run(tmp_path, "swav", 0, (50, 70), (55, 56)))  # worse than random on kNN
    out = tmp_path / "summary.json"
    seeds_summary.main([*runs, "--out", str(out)])
    rows = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]  # padding aside
    assert "| barlow | 0,1,2 | 61.0 +/- 1.0 | 72.0 +/- 2.0 | 55.0 +/- 0.0 | 56.0 +/- 0.0 | yes |" in rows
    assert "| swav | 0 | 50.0 +/- 0.0 | 70.0 +/- 0.0 | 55.0 +/- 0.0 | 56.0 +/- 0.0 | no |" in rows
    data = json.loads(out.read_text())
    assert data["barlow"]["pretrained_linear"]["std"] == pytest.approx(np.std([70, 72, 74], ddof=1))
    assert data["swav"]["beats_random_every_seed"] is False


def test_a_directory_without_results_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="results.json does not exist"):
        seeds_summary.main([str(tmp_path)])
