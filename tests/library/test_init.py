"""PyTorch-compatible initializers: fans, bounds and standard deviations vs torch.nn.init's formulas."""

import math

import jax
import numpy as np
import pytest

from jaxnorm import init


def test_fans_match_torch_conventions():
    assert init.fans((5, 5, 3, 6)) == (75, 150)          # Flax conv (kh, kw, in, out)
    assert init.fans((6, 3, 5, 5), layout="torch") == (75, 150)
    assert init.fans((256, 128)) == (256, 128)           # Flax Dense (in, out)
    with pytest.raises(ValueError, match="^fans: expected a weight with at least 2 dims"):
        init.fans((3,))


def test_gains():
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="^calculate_gain: unsupported"):
        init.calculate_gain("swishy")


def _sample(initializer, shape):
    return np.asarray(initializer(jax.random.key(0), shape))


def test_torch_default_is_uniform_one_over_sqrt_fan_in():
    w = _sample(init.torch_default_kernel(), (400, 300))
    bound = 1 / math.sqrt(400)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.02)
    b = _sample(init.torch_default_bias(400), (300,))
    assert np.abs(b).max() <= bound


@pytest.mark.parametrize("initializer, expected_std", [
    (init.kaiming_normal(), math.sqrt(2 / 400)),
    (init.kaiming_normal(mode="fan_out"), math.sqrt(2 / 300)),
    (init.xavier_normal(), math.sqrt(2 / 700)),
    (init.normal(std=1.0), 1.0),
])
def test_normal_initializer_stds(initializer, expected_std):
    np.testing.assert_allclose(_sample(initializer, (400, 300)).std(), expected_std, rtol=0.02)


def test_against_torch_statistics():
    torch = pytest.importorskip("torch")
    shape_torch = (120, 400)
    t = torch.empty(shape_torch)
    cases = [(lambda w: torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5)), init.torch_default_kernel(),
              init.torch_default_kernel(layout="torch")),
             (torch.nn.init.kaiming_normal_, init.kaiming_normal(), init.kaiming_normal(layout="torch")),
             (torch.nn.init.xavier_normal_, init.xavier_normal(), init.xavier_normal(layout="torch")),
             (torch.nn.init.xavier_uniform_, init.xavier_uniform(), init.xavier_uniform(layout="torch")),
             (lambda w: torch.nn.init.kaiming_uniform_(w, a=0.2, nonlinearity="leaky_relu"),
              init.kaiming_uniform(a=0.2), init.kaiming_uniform(a=0.2, layout="torch"))]
    for torch_fn, ours, ours_torch in cases:
        torch.manual_seed(0)
        ref = torch_fn(t).numpy()
        mine = _sample(ours, shape_torch[::-1])  # the same layer in Flax layout (in, out)
        np.testing.assert_allclose(mine.std(), ref.std(), rtol=0.03)
        np.testing.assert_allclose(_sample(ours_torch, shape_torch).std(), ref.std(), rtol=0.03)
