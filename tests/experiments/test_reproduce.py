"""experiments.reproduce: failure handling (fast, with stand-in stages), the report's numbers against the files the
stages wrote, and the --quick end-to-end run (slow)."""

import json
import math
import re
import subprocess
import sys

import pytest

from experiments import mlp_study, reproduce
from experiments.common import lesson
from experiments.common import report as md

OTHERS = ["--skip", "mlp_study", "--skip", "lenet", "--skip", "small_batch", "--skip", "benchmark"]


def _boom(d, args):
    raise RuntimeError("boom in stage")


def _exit2(d, args):
    print("some output before dying")
    raise SystemExit(2)


def test_failed_stages_are_reported_and_exit_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(reproduce.STAGE_FUNCS, "bn_running_stats", _boom)
    monkeypatch.setitem(reproduce.STAGE_FUNCS, "norm_compare", _exit2)
    status = reproduce.main(["--out", str(tmp_path), *OTHERS])
    assert status == 1
    text = (tmp_path / "report.md").read_text()
    assert "2 stage(s) failed: bn_running_stats, norm_compare" in text
    assert "RuntimeError: boom in stage" in text and "exited with status 2" in text
    assert text.count("_Skipped (`--skip`)._") == 4
    log = (tmp_path / "logs" / "norm_compare.log").read_text()
    assert "some output before dying" in log and "SystemExit" in log
    assert "Traceback" in (tmp_path / "logs" / "bn_running_stats.log").read_text()
    out = capsys.readouterr().out
    assert "[1/2] bn_running_stats: FAILED: RuntimeError: boom in stage" in out
    assert "FAILED: bn_running_stats, norm_compare" in out


def test_a_section_that_cannot_render_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setitem(reproduce.STAGE_FUNCS, "bn_running_stats", lambda d, args: {"not": "what it expects"})
    status = reproduce.main(["--out", str(tmp_path), *OTHERS, "--skip", "norm_compare"])
    assert status == 1
    assert "Could not render this section" in (tmp_path / "report.md").read_text()


def test_the_running_statistics_section_shows_the_computed_values(tmp_path):
    status = reproduce.main(["--out", str(tmp_path), *OTHERS, "--skip", "norm_compare"])
    assert status == 0
    text = (tmp_path / "report.md").read_text()
    assert "All stages succeeded." in text
    assert "![BN running statistics](bn_running_stats/bn_running_stats.png)" in text
    computed = json.loads((tmp_path / "bn_running_stats" / "bn_running_stats.json").read_text())["bn1d"]
    for it in computed["iterations"]:  # the jaxnorm column is the stage's own output, not the lesson's constant
        row = next(line for line in text.splitlines() if line.startswith(f"| {it['iteration']} | running_mean |"))
        assert row.split(" | ")[2] == "[" + ", ".join(f"{v:.4f}" for v in it["running_mean"]) + "]"
    assert "Equal to the hand computation in every demo within 1e-6: yes" in text


def test_sub_cli_command_lines(tmp_path):
    args = reproduce.parse_args(["--quick", "--data", "photos"])
    assert args.lenet_epochs == reproduce.QUICK_LENET_EPOCHS
    assert reproduce.lenet_argv(tmp_path, args) == ["--out", str(tmp_path), "--epochs", "2", "--data", "photos"]
    assert reproduce.benchmark_argv(tmp_path, args)[-1] == "--quick"
    assert reproduce.small_batch_argv(tmp_path, args)[-1] == "--quick"
    full = reproduce.parse_args(["--small-batch", "full"])
    assert full.lenet_epochs == 10 and "--quick" not in reproduce.benchmark_argv(tmp_path, full)
    assert "--quick" not in reproduce.small_batch_argv(tmp_path, full)
    focused = reproduce.small_batch_argv(tmp_path, reproduce.parse_args([]))  # the default: BN against GN
    assert focused[2:] == ["--norms", "bn", "gn", "--batch-sizes", "2", "32"]
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--lenet-epochs", "0"])


def test_markdown_table_and_numbers():
    assert md.table(["a", "b"], [[1, "x|y"]], ["l", "r"]) == "| a | b |\n| :-- | --: |\n| 1 | x\\|y |"
    with pytest.raises(ValueError, match="rows of 2 cells"):
        md.table(["a", "b"], [[1]])
    assert md.fmt(float("nan")) == "NaN" and md.fmt(None) == "–" and md.pct(0.875) == "87.50%"


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(flag in out for flag in ("--quick", "--out", "--data", "--small-batch"))


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path):
    """The four stages that are cheap enough for the suite (the small-batch study and the benchmark have their own
    tests, which also render their report sections)."""
    out = tmp_path / "repro"
    r = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--quick", "--data", "synthetic", "--out",
                        str(out), "--skip", "small_batch", "--skip", "benchmark"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "All stages succeeded." in text
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out / rel).stat().st_size > 10_000, rel
    # The MLP's first NaN layer in the report is the one computed in the run (the lesson's is labelled apart).
    stds = json.loads((out / "mlp_study" / "stds.json").read_text())
    first_nan = mlp_study.first_nan_layer([math.nan if v is None else v for v in stds["normal"]])
    row = next(r for r in _table_rows(text, "| config | first NaN layer") if r[0] == "normal")
    assert row[1] == str(lesson.MLP_FIRST_NAN["normal"]) and row[3] == str(first_nan)
    # The LeNet table is metrics.json's last epoch; the data used is named.
    metrics = json.loads((out / "lenet" / "metrics.json").read_text())
    rows = _table_rows(text, "| config | train loss")
    assert [row[0] for row in rows] == list(metrics)
    for row in rows:
        last = metrics[row[0]][-1]
        if last["train_loss"] is not None:
            assert row[1] == f"{last['train_loss']:.4f}" and row[4] == f"{100 * last['valid_acc']:.2f}%"
    assert "SYNTHETIC" in text
