"""jaxnorm.torch_to_nnx / jaxnorm.nnx_to_torch_state_dict: whole NNX models <-> flat PyTorch state dicts.

Goldens: PyTorch's own key names and layouts (written out below), and with torch installed a real PyTorch LeNet_bn
(the lesson's model): outputs in eval and train mode, the running statistics after a train-mode forward, and
``load_state_dict(strict=True)`` of the exported dict.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.nnx as jx

RNG = np.random.default_rng(0)


class Net(nnx.Module):
    """Every kind of leaf the converter renames or transposes, and a list of layers."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)  # kernel (3, 3, 2, 4) -> weight (4, 2, 3, 3)
        self.bn = jx.BatchNorm2d(4, axis=-1)
        self.flax_bn = nnx.BatchNorm(4, rngs=rngs)  # scale/mean/var -> weight/running_mean/running_var
        self.layers = nnx.List([nnx.Linear(4, 3, rngs=rngs), nnx.Linear(3, 2, use_bias=False, rngs=rngs)])
        self.ln = jx.LayerNorm(2, bias=False)
        self.embed = nnx.Embed(5, 4, rngs=rngs)  # embedding -> weight, same layout
        self.conv1d = nnx.Conv(4, 3, (2,), rngs=rngs)  # kernel (2, 4, 3) -> weight (3, 4, 2)


TORCH_SHAPES = {
    "conv.weight": (4, 2, 3, 3), "conv.bias": (4,),
    "bn.weight": (4,), "bn.bias": (4,), "bn.running_mean": (4,), "bn.running_var": (4,), "bn.num_batches_tracked": (),
    "flax_bn.weight": (4,), "flax_bn.bias": (4,), "flax_bn.running_mean": (4,), "flax_bn.running_var": (4,),
    "layers.0.weight": (3, 4), "layers.0.bias": (3,), "layers.1.weight": (2, 3),
    "ln.weight": (2,), "embed.weight": (5, 4), "conv1d.weight": (3, 4, 2), "conv1d.bias": (3,),
}


def _random_net() -> Net:
    """A Net with non-trivial values in every Variable (a counter of 7), so that a wrong transpose or key shows.

    Built abstractly (``nnx.eval_shape``) and filled from NumPy: eagerly, Flax's random initializers compile for every
    new shape (~1 s each here).
    """
    model = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    for _, variable in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        value = variable.get_value()
        if jnp.issubdtype(value.dtype, jnp.integer):
            variable.set_value(jnp.full(value.shape, 7, value.dtype))
        else:
            variable.set_value(jnp.asarray(RNG.uniform(0.5, 2.0, value.shape), value.dtype))
    return model


def test_keys_layouts_and_round_trip():
    model = _random_net()
    sd = jn.nnx_to_torch_state_dict(model)
    assert {k: v.shape for k, v in sd.items()} == TORCH_SHAPES
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and int(sd["bn.num_batches_tracked"]) == 7
    np.testing.assert_array_equal(sd["conv.weight"], np.transpose(model.conv.kernel[...], (3, 2, 0, 1)))
    np.testing.assert_array_equal(sd["layers.0.weight"], np.asarray(model.layers[0].kernel[...]).T)
    np.testing.assert_array_equal(sd["flax_bn.running_var"], model.flax_bn.var[...])
    assert all(v.flags.writeable and v.flags.c_contiguous for v in sd.values())  # torch.from_numpy takes them

    fresh = _random_net()
    assert jn.torch_to_nnx(sd, fresh) is fresh  # in place, returned for chaining
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(fresh)), nnx.to_pure_dict(nnx.state(model)))
    dtypes = {path: v.get_value().dtype for path, v in nnx.to_flat_state(nnx.state(fresh))}
    assert dtypes[("bn", "num_batches_tracked")] == jnp.int32 and dtypes[("conv", "kernel")] == jnp.float32


def test_errors_and_old_checkpoints():
    model = _random_net()
    sd = jn.nnx_to_torch_state_dict(model)
    before = nnx.to_pure_dict(nnx.state(model))
    changed = {k: v + 1 if v.dtype == np.float32 else v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"^torch_to_nnx: .*missing keys \['layers.0.bias'\]"):
        jn.torch_to_nnx({k: v for k, v in changed.items() if k != "layers.0.bias"}, model)
    with pytest.raises(ValueError, match=r"^torch_to_nnx: .*unexpected keys \['extra.weight'\] \(strict=False ignores them\)"):
        jn.torch_to_nnx({**changed, "extra.weight": np.ones(2)}, model)
    with pytest.raises(ValueError, match=r"^torch_to_nnx: state dict entry 'conv.weight': expected shape \(4, 2, 3, 3\) \(NNX conv/kernel of shape "
                                         r"\(3, 3, 2, 4\)\), got \(4, 2, 3, 2\)"):
        jn.torch_to_nnx({**changed, "conv.weight": np.ones((4, 2, 3, 2), np.float32)}, model)
    with pytest.raises(ValueError, match=r"'ln.weight': expected shape \(2,\) .*got \(3,\)"):  # the last one read
        jn.torch_to_nnx({**changed, "ln.weight": np.ones(3, np.float32)}, model)
    # every entry is checked before any is written: the failed loads changed nothing
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model)), before)
    with pytest.raises(TypeError, match="^torch_to_nnx: expected a state dict"):
        jn.torch_to_nnx(list(sd.items()), model)
    with pytest.raises(TypeError, match="^nnx_to_torch_state_dict: expected a flax.nnx.Module, got dict"):
        jn.nnx_to_torch_state_dict(before)

    sd["ln.weight"] = np.full(2, 3.0, np.float32)
    jn.torch_to_nnx({**sd, "extra.weight": np.ones(2)}, model, strict=False)  # unexpected keys ignored
    np.testing.assert_array_equal(model.ln.weight[...], [3.0, 3.0])
    # a counter missing (pre-0.4.1 checkpoint) loads as 0; a counter the model has no place for is ignored
    jn.torch_to_nnx({**{k: v for k, v in sd.items() if k != "bn.num_batches_tracked"},
                     "flax_bn.num_batches_tracked": np.array(3)}, model)
    assert model.bn.num_batches_tracked[...].dtype == jnp.int32 and int(model.bn.num_batches_tracked[...]) == 0

    class Clash(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jnp.ones((2, 2)))
            self.weight = nnx.Param(jnp.ones((2, 2)))

    with pytest.raises(ValueError, match="two NNX Variables map to the PyTorch key 'weight'"):
        jn.nnx_to_torch_state_dict(Clash())


class LeNetBN(nnx.Module):
    """The lesson's LeNet_bn in NNX: NHWC convs, jaxnorm BN over the channels-last axis, NCHW flatten order."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, (5, 5), padding="VALID", rngs=rngs)
        self.bn1 = jx.BatchNorm2d(6, axis=-1)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.bn2 = jx.BatchNorm2d(16, axis=-1)
        self.fc1 = nnx.Linear(16 * 5 * 5, 120, rngs=rngs)
        self.bn3 = jx.BatchNorm1d(120)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, 2, rngs=rngs)

    def __call__(self, x):  # (N, 32, 32, 3)
        pool = lambda h: nnx.max_pool(h, (2, 2), strides=(2, 2))  # noqa: E731
        x = pool(nnx.relu(self.bn1(self.conv1(x))))
        x = pool(nnx.relu(self.bn2(self.conv2(x))))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's view(N, -1) order: (C, H, W)
        x = nnx.relu(self.bn3(self.fc1(x)))
        return self.fc3(nnx.relu(self.fc2(x)))


def _torch_lenet_bn(torch):
    nn = torch.nn

    class TorchLeNetBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 6, 5), nn.BatchNorm2d(6)
            self.conv2, self.bn2 = nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16)
            self.fc1, self.bn3 = nn.Linear(16 * 5 * 5, 120), nn.BatchNorm1d(120)
            self.fc2, self.fc3 = nn.Linear(120, 84), nn.Linear(84, 2)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
            x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
            x = torch.relu(self.bn3(self.fc1(x.view(x.size(0), -1))))
            return self.fc3(torch.relu(self.fc2(x)))

    return TorchLeNetBN()


def test_torch_lenet_bn_loads_and_matches_in_eval_and_train_mode():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = _torch_lenet_bn(torch)
    optimizer = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):  # a couple of training steps: non-trivial weights and running statistics
        loss = torch.nn.functional.cross_entropy(tmodel(torch.randn(8, 3, 32, 32) * 2 + 1), torch.tensor([0, 1] * 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model = jn.torch_to_nnx(tmodel.state_dict(), nnx.eval_shape(lambda: LeNetBN(nnx.Rngs(0))))  # no init: loaded
    assert int(model.bn1.num_batches_tracked[...]) == 2

    x = RNG.standard_normal((4, 3, 32, 32)).astype(np.float32)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    forward = nnx.jit(lambda m, x: m(x))
    for train in (False, True):
        tmodel.train(train)
        model.train() if train else model.eval()
        with torch.no_grad():
            want = tmodel(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(forward(model, x_nhwc), want, rtol=2e-5, atol=2e-5)
    # the train-mode forward updated the running statistics of both alike
    sd = jn.nnx_to_torch_state_dict(model)
    want_sd = tmodel.state_dict()
    assert list(sd) == sorted(want_sd)
    for key, value in want_sd.items():
        assert sd[key].dtype == value.numpy().dtype, key
        np.testing.assert_allclose(sd[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert int(sd["bn3.num_batches_tracked"]) == 3

    fresh = _torch_lenet_bn(torch)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sd[key])
    with torch.no_grad():  # the loaded arrays are copies: a later in-place update in torch does not reach the model
        tmodel.bn1.running_mean.add_(1.0)
    np.testing.assert_array_equal(model.bn1.running_mean[...], sd["bn1.running_mean"])
