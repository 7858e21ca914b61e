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
        drop = rows["8"]["valid_acc"][0] - rows["2"]["valid_acc"][0]  # the mean of the paired drops
        assert report["summary"][norm]["drop_small_vs_large"][0] == pytest.approx(drop)
        assert next(line for line in report["conclusions"] if line.startswith(f"{norm}: accuracy at batch 8"))
    assert report["conclusions"][-1].startswith("bn loses")


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


def test_the_interval_is_students_t_over_seeds():
    mean, low, high = small_batch.mean_interval([0.1, 0.2, 0.3])
    # t(0.975, 2 degrees of freedom) = 4.303; sample std 0.1; n = 3
    assert mean == pytest.approx(0.2) and (high - mean) == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
    assert low == pytest.approx(2 * mean - high)
    assert all(np.isnan(small_batch.mean_interval([0.5])[1:]))


def test_conclusions_say_what_the_seeds_support():
    """A drop counts only when its interval excludes 0; BN against a per-example norm is paired by seed."""
    def runs(small, large):
        return {2: {"valid_acc": small, "train_loss": [0.0] * len(small)},
                32: {"valid_acc": large, "train_loss": [0.0] * len(small)}}

    results = {"bn": runs([0.50, 0.52, 0.55], [0.70, 0.71, 0.73]),    # a clear drop of ~19 points
               "gn": runs([0.68, 0.60, 0.75], [0.70, 0.66, 0.69])}    # noise around 0
    bn, gn, versus = small_batch.conclusions(results, seeds=3)
    assert bn.startswith("bn: accuracy at batch 32 minus batch 2: +19.0 points") and bn.endswith(
        "a drop at small batches")
    assert gn.endswith("not distinguishable from seed-to-seed noise at this size")
    assert versus.startswith("bn loses +18.3 points more than gn") and versus.endswith(
        "bn suffers more from small batches than gn")
    one_seed = small_batch.conclusions({"bn": runs([0.5], [0.7])}, seeds=1)
    assert "no interval from one seed" in one_seed[0] and one_seed[0].endswith("at this size")


def test_readmes_small_batch_numbers_are_the_committed_full_run():
    """README quotes each norm's drop with its interval, and BN against GN, LN and IN, from
    benchmarks/small_batch/full.json; the verdicts follow from the intervals."""
    readme = (ROOT / "README.md").read_text()
    report = json.loads((ROOT / "benchmarks" / "small_batch" / "full.json").read_text())
    results = {n: {int(b): r for b, r in by.items()} for n, by in report["results"].items()}
    labels = {"bn": "BatchNorm", "renorm": "Batch Renorm", "gn": "GroupNorm", "ln": "LayerNorm",
              "in": "InstanceNorm"}
    for norm, label in labels.items():
        mean, low, high = small_batch.mean_interval(small_batch._drops(results[norm]))
        verdict = "a drop" if low > 0 else "no drop distinguishable from seed-to-seed noise"
        assert (f"- {label}: {100 * mean:+.1f} points (95 % CI {100 * low:+.1f} to {100 * high:+.1f}): {verdict}"
                in readme), label
    for norm in ("gn", "ln", "in"):
        mean, low, high = small_batch.mean_interval(small_batch._drops(results["bn"]) - small_batch._drops(results[norm]))
        quoted = f"{labels[norm]} (+{100 * mean:.1f}" + (", CI" if low <= 0 else " points, 95 % CI")
        assert quoted in " ".join(readme.split()) and (low > 0) == (norm == "gn"), norm
    assert report["settings"]["seeds"] == 5 and report["settings"]["epochs"] == 10
