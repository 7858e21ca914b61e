"""experiments.small_batch: a small run of the study's own code (two norms, batch sizes 2 and 8, two seeds, one epoch on 48 images),
its files, figure and report section, the learning-rate rule, the renorm schedule and the derived conclusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import small_batch
from experiments.common import sections

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("small_batch")
    cfg = small_batch.Study(norms=("bn", "gn"), batch_sizes=(2, 8), seeds=2, epochs=1, train_images=48,
                            data="synthetic", out=out)
    return cfg, small_batch.run(cfg, log=lambda line: None)


@pytest.mark.slow  # trains the study end to end (module fixture)
def test_every_norm_batch_size_and_seed_is_trained_and_written(study):
    cfg, report = study
    saved = json.loads((cfg.out / "small_batch.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["results"]) == {"bn", "gn"} and set(saved["results"]["bn"]) == {"2", "8"}
    for by_batch in saved["results"].values():
        for r in by_batch.values():
            assert len(r["valid_acc"]) == len(r["train_loss"]) == 2
            assert all(0 <= a <= 1 for a in r["valid_acc"]) and all(np.isfinite(r["train_loss"]))
    assert (cfg.out / "small_batch.png").stat().st_size > 10_000


@pytest.mark.slow  # trains the study end to end (module fixture)
def test_the_summary_and_conclusions_are_computed_from_the_results(study):
    _, report = study
    for norm, by_batch in report["results"].items():
        rows = report["summary"][norm]["rows"]
        for b, r in by_batch.items():
            assert rows[b]["valid_acc"] == pytest.approx((np.mean(r["valid_acc"]), np.std(r["valid_acc"])))
        drop = rows["8"]["valid_acc"][0] - rows["2"]["valid_acc"][0]
        assert report["summary"][norm]["drop_small_vs_large"] == pytest.approx(drop)
        assert f"{norm}: valid accuracy" in next(line for line in report["conclusions"] if line.startswith(norm))
    worse = report["summary"]["bn"]["drop_small_vs_large"] > report["summary"]["gn"]["drop_small_vs_large"]
    assert report["conclusions"][-1].endswith("yes" if worse else "no")


@pytest.mark.slow  # trains the study end to end (module fixture)
def test_the_report_section_shows_the_summary(study, tmp_path):
    cfg, report = study
    text = sections.small_batch({**report, "figure": str(cfg.out / "small_batch.png")}, cfg.out)
    mean, std = report["summary"]["gn"]["rows"]["2"]["valid_acc"]
    assert f"| gn | {100 * mean:.1f} ± {100 * std:.1f} |" in text


def test_learning_rate_scales_with_the_batch_and_renorm_relaxes_its_clips():
    task = small_batch.make_task("renorm", small_batch.load_data(small_batch.Study(data="synthetic")))
    state = small_batch.start_state(task, seed=1, batch_size=4, updates=1000)
    assert float(state["opt_state"].hyperparams["learning_rate"]) == pytest.approx(0.01 * 4 / 16)
    np.testing.assert_allclose(np.asarray(state["schedule"]), [50, 400, 250])


def test_cli_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as help_:
        small_batch.main(["--help"])
    out = capsys.readouterr().out
    assert help_.value.code == 0 and all(f in out for f in ("--quick", "--seeds", "--norms", "--out"))
    with pytest.raises(SystemExit) as bad:
        small_batch.main(["--seeds", "0"])
    assert bad.value.code == 2 and "--seeds and --epochs must be >= 1" in capsys.readouterr().err
