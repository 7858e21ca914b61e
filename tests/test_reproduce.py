"""experiments.reproduce: failure handling (fast, with stand-in stages) and the --quick end-to-end run (slow)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import report, reproduce

OTHERS = ["--skip", "mlp_study", "--skip", "lenet", "--skip", "benchmark"]


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
    assert text.count("_Skipped (`--skip`)._") == 3
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


def test_a_real_stage_succeeds_and_its_figure_is_embedded(tmp_path):
    status = reproduce.main(["--out", str(tmp_path), *OTHERS, "--skip", "norm_compare"])
    assert status == 0
    text = (tmp_path / "report.md").read_text()
    assert "All stages succeeded." in text
    assert "![BN running statistics](bn_running_stats/bn_running_stats.png)" in text
    assert "| 1 | running_mean | [0.5100, 1.0200, 1.5300, 2.0400, 2.5500] |" in text


def test_sub_cli_command_lines(tmp_path):
    args = reproduce.parse_args(["--quick", "--data", "photos"])
    assert args.lenet_epochs == reproduce.QUICK_LENET_EPOCHS
    assert reproduce.lenet_argv(tmp_path, args) == ["--out", str(tmp_path), "--epochs", "2", "--data", "photos"]
    assert reproduce.benchmark_argv(tmp_path, args)[-1] == "--quick"
    assert reproduce.parse_args([]).lenet_epochs == 10 and "--quick" not in reproduce.benchmark_argv(tmp_path,
                                                                                                     reproduce.parse_args([]))
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--lenet-epochs", "0"])


def test_markdown_table_and_numbers():
    assert report.table(["a", "b"], [[1, "x|y"]], ["l", "r"]) == "| a | b |\n| :-- | --: |\n| 1 | x\\|y |"
    with pytest.raises(ValueError, match="rows of 2 cells"):
        report.table(["a", "b"], [[1]])
    assert report.fmt(float("nan")) == "NaN" and report.fmt(None) == "–" and report.pct(0.875) == "87.50%"


def test_cli_help():
    r = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--quick" in r.stdout and "--out" in r.stdout and "--data" in r.stdout


@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path):
    out = tmp_path / "repro"
    r = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "All stages succeeded." in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 4
    for rel in images:
        assert (out / rel).stat().st_size > 10_000, rel
    for f in ("mlp_study/stds.json", "lenet/metrics.json", "benchmark/benchmark.json",
              "bn_running_stats/bn_running_stats.json", "norm_compare/norm_compare.json"):
        assert (out / f).exists(), f
    # the lesson's numbers side by side: the MLP NaN layer and the BN1d running statistics
    assert "| normal | 35 |" in text and "[0.3000, 0.6000, 0.9000, 1.2000, 1.5000]" in text
    assert all(Path(out / "logs" / f"{s}.log").exists() for s in reproduce.STAGES)
