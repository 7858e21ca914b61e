"""experiments.bn_running_stats and experiments.norm_compare: the lesson's numbers, the identities, the CLIs."""

import importlib
import json

import numpy as np
import pytest

from experiments import bn_running_stats, norm_compare

# ------------------------------------------------------------------------------------------ bn_running_stats
# The lesson's printed BatchNorm1d tensors (momentum 0.3, features 1..5, two iterations), typed in from seed.md.
LESSON_RM = [[0.3, 0.6, 0.9, 1.2, 1.5], [0.51, 1.02, 1.53, 2.04, 2.55]]
LESSON_RV = [[0.7] * 5, [0.49] * 5]


def test_bn1d_running_stats_match_the_lesson():
    res = bn_running_stats.run_demo("bn1d", verbose=False)
    assert res["input_shape"] == [3, 5, 1]
    for i, it in enumerate(res["iterations"]):
        np.testing.assert_allclose(it["running_mean"], LESSON_RM[i], atol=1e-6)
        np.testing.assert_allclose(it["running_var"], LESSON_RV[i], atol=1e-6)
        assert it["num_batches_tracked"] == i + 1
        assert all(s == [5] for s in it["shapes"].values())


@pytest.mark.parametrize("name, channels, shape", [("bn2d", 6, [3, 6, 2, 2]), ("bn3d", 4, [3, 4, 2, 2, 3])])
def test_bn2d_bn3d_shapes_and_values(name, channels, shape):
    res = bn_running_stats.run_demo(name, verbose=False)
    assert res["input_shape"] == shape
    c = np.arange(1, channels + 1)
    for it, factor, var in zip(res["iterations"], (0.3, 0.51), (0.7, 0.49), strict=True):
        assert all(s == [channels] for s in it["shapes"].values())  # the lesson: torch.Size([C]) for all four
        np.testing.assert_allclose(it["running_mean"], factor * c, rtol=1e-6)
        np.testing.assert_allclose(it["running_var"], np.full(channels, var), rtol=1e-6)


def test_hand_computation_is_the_lessons():
    hand = bn_running_stats.hand_running_stats(5)
    assert hand[0]["running_mean"][1] == pytest.approx(0.6) and hand[1]["running_mean"][1] == pytest.approx(1.02)
    assert hand[1]["running_var"][1] == 0.48999999999999994  # the lesson prints this float64 value exactly


def test_bn_running_stats_run_writes_outputs(tmp_path, capsys):
    res = bn_running_stats.run(tmp_path)
    data = json.loads((tmp_path / "bn_running_stats.json").read_text())
    assert set(data) == {"bn1d", "bn2d", "bn3d", "lesson"}
    assert (tmp_path / "bn_running_stats.png").stat().st_size > 10_000
    assert max(res[k]["max_abs_diff_vs_hand"] for k in ("bn1d", "bn2d", "bn3d")) < 1e-6
    out = capsys.readouterr().out
    assert "iteration:1, running mean: [0.5100, 1.0200, 1.5300, 2.0400, 2.5500]" in out
    assert "iter:0, weight.shape: (6,)" in out


# ---------------------------------------------------------------------------------------------- norm_compare
@pytest.fixture(scope="module")
def compared():
    x = norm_compare.make_input((4, 6, 5, 5), seed=3)
    return x, norm_compare.apply_all(x, num_groups=3)


def test_identities_hold():
    x = norm_compare.make_input((3, 6, 4, 4), seed=2)
    for name, diff in norm_compare.identities(x).items():
        assert diff < 1e-5, name


def test_each_norm_matches_float64_numpy(compared):
    x, outputs = compared
    for m in norm_compare.METHODS:
        np.testing.assert_allclose(outputs[m], norm_compare.numpy_reference(x, m, 3), atol=1e-5, err_msg=m)


def test_each_norm_normalizes_its_own_grouping_only(compared):
    x, outputs = compared
    matrix = norm_compare.grouping_matrix(outputs, 3)
    for m in norm_compare.METHODS:
        assert matrix[m][m]["max_abs_mean"] < 1e-5 and matrix[m][m]["max_abs_std_minus_1"] < 1e-3, m
    # the input is built so that no grouping is normalized by another norm's coarser or crossing statistics
    assert matrix["BN"]["LN"]["max_abs_mean"] > 0.1 and matrix["LN"]["BN"]["max_abs_mean"] > 0.1
    assert matrix["GN"]["IN"]["max_abs_std_minus_1"] > 0.1 and matrix["BN"]["IN"]["max_abs_mean"] > 0.1


def test_group_stats_counts():
    y = np.zeros((4, 6, 2, 3))
    counts = {g: norm_compare.group_stats(y, g, 3)[0].size for g in norm_compare.METHODS}
    assert counts == {"BN": 6, "LN": 4, "IN": 24, "GN": 12}
    with pytest.raises(ValueError, match="grouping"):
        norm_compare.group_stats(y, "RMS", 3)


@pytest.mark.slow
def test_norm_compare_run_writes_outputs(tmp_path):
    res = norm_compare.run(tmp_path, shape=(2, 4, 3, 3), num_groups=2)
    for f in ("norm_compare.json", "norm_axes.png", "norm_stats.png"):
        assert (tmp_path / f).stat().st_size > 1000, f
    assert res["own"]["GN"]["groups"] == 4 and res["own"]["IN"]["groups"] == 8
    with pytest.raises(ValueError, match="divisible"):
        norm_compare.run(tmp_path, shape=(2, 4, 3, 3), num_groups=3)


# ------------------------------------------------------------------------------------------------------ CLIs
# In this process (README's test runs each CLI's --help as a real command).
@pytest.mark.parametrize("module", ["bn_running_stats", "mlp_study", "norm_compare"])
def test_cli_help(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"experiments.{module}").main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and f"experiments.{module}" in out


def test_norm_compare_cli_rejects_bad_groups(capsys):
    with pytest.raises(SystemExit) as exit_:
        norm_compare.main(["--groups", "4", "--out", "unused"])
    assert exit_.value.code == 2 and "--groups" in capsys.readouterr().err
