"""jaxnorm.torch_to_equinox / jaxnorm.equinox_to_torch_state_dict: Equinox models and their state <-> flat PyTorch
state dicts.

Goldens: PyTorch's own key names and layouts (written out below), and with torch installed a torchvision-style ResNet
(BasicBlocks with a downsample ``Sequential``): loaded with ``strict=True`` from a trained PyTorch model, it gives
PyTorch's outputs in eval and train mode, its running statistics after a train-mode forward and its parameter
gradients, and its export loads back into PyTorch with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import numpy as np
import pytest

eqx = pytest.importorskip("equinox")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxnorm as jn  # noqa: E402
import jaxnorm.equinox as jeqx  # noqa: E402

torch_to_equinox, equinox_to_torch_state_dict = jn.torch_to_equinox, jn.equinox_to_torch_state_dict

RNG = np.random.default_rng(0)


class Net(eqx.Module):
    """Every layout the converter handles: conv biases reshaped, sequences numbered, Sequential looked through."""

    conv: eqx.nn.Conv2d
    bn: jeqx.BatchNorm2d
    layers: list
    head: eqx.nn.Sequential
    norms: dict
    embed: eqx.nn.Embedding

    def __init__(self, key):
        keys = jax.random.split(key, 5)
        self.conv = eqx.nn.Conv2d(2, 4, 3, key=keys[0])  # weight (4, 2, 3, 3), bias (4, 1, 1) -> (4,)
        self.bn = jeqx.BatchNorm2d(4)
        self.layers = [eqx.nn.Linear(4, 3, key=keys[1]), eqx.nn.Linear(3, 2, use_bias=False, key=keys[2])]
        self.head = eqx.nn.Sequential([eqx.nn.Conv1d(4, 3, 2, key=keys[3]), eqx.nn.Lambda(jax.nn.relu),
                                       jeqx.InstanceNorm1d(3, affine=True, track_running_stats=True)])
        self.norms = {"ln": eqx.nn.LayerNorm(2, use_bias=False), "gn": jeqx.GroupNorm(1, 4)}
        self.embed = eqx.nn.Embedding(5, 4, key=keys[4])


TORCH_SHAPES = {
    "conv.weight": (4, 2, 3, 3), "conv.bias": (4,),
    "bn.weight": (4,), "bn.bias": (4,), "bn.running_mean": (4,), "bn.running_var": (4,), "bn.num_batches_tracked": (),
    "layers.0.weight": (3, 4), "layers.0.bias": (3,), "layers.1.weight": (2, 3),
    "head.0.weight": (3, 4, 2), "head.0.bias": (3,), "head.2.weight": (3,), "head.2.bias": (3,),
    "head.2.running_mean": (3,), "head.2.running_var": (3,), "head.2.num_batches_tracked": (),
    "norms.gn.weight": (4,), "norms.gn.bias": (4,), "norms.ln.weight": (2,), "embed.weight": (5, 4),
}


def random_state_dict() -> dict[str, np.ndarray]:
    return {k: (np.array(7, np.int64) if k.endswith("num_batches_tracked")
                else RNG.uniform(0.5, 2.0, shape).astype(np.float32)) for k, shape in TORCH_SHAPES.items()}


def test_keys_layouts_and_round_trip_through_an_abstract_model():
    sd = random_state_dict()
    abstract = eqx.filter_eval_shape(eqx.nn.make_with_state(Net), jax.random.key(0))  # no initializer runs
    model, state = torch_to_equinox(sd, *abstract)
    np.testing.assert_array_equal(model.conv.bias, sd["conv.bias"].reshape(4, 1, 1))
    np.testing.assert_array_equal(model.layers[0].weight, sd["layers.0.weight"])  # (out, in) as PyTorch
    stats = state.get(model.head.layers[2].state_index)
    assert stats["num_batches_tracked"].dtype == jnp.int32 and int(stats["num_batches_tracked"]) == 7
    out = equinox_to_torch_state_dict(model, state)
    assert {k: v.shape for k, v in out.items()} == TORCH_SHAPES
    assert list(out)[:7] == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                             "bn.num_batches_tracked"]  # the model's order: a layer's parameters, then its buffers
    for key, value in sd.items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)
        assert out[key].dtype == value.dtype and out[key].flags.writeable, key


def test_errors_leave_the_inputs_usable():
    model, state = torch_to_equinox(random_state_dict(), *eqx.filter_eval_shape(eqx.nn.make_with_state(Net),
                                                                                jax.random.key(1)))
    sd = random_state_dict()
    with pytest.raises(ValueError, match=r"^torch_to_equinox: state dict does not match the model: missing keys "
                                         r"\['layers.0.bias'\]"):
        torch_to_equinox({k: v for k, v in sd.items() if k != "layers.0.bias"}, model, state)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\] \(strict=False ignores them\)"):
        torch_to_equinox({**sd, "extra.weight": np.ones(2)}, model, state)
    with pytest.raises(ValueError, match=r"^torch_to_equinox: state dict entry 'conv.weight': expected shape "
                                         r"\(4, 2, 3, 3\) \(Equinox shape \(4, 2, 3, 3\)\), got \(4, 2, 3, 2\)"):
        torch_to_equinox({**sd, "conv.weight": np.ones((4, 2, 3, 2), np.float32)}, model, state)
    with pytest.raises(ValueError, match=r"'conv.bias': expected shape \(4,\) \(Equinox shape \(4, 1, 1\)\), got "
                                         r"\(4, 1, 1\)"):
        torch_to_equinox({**sd, "conv.bias": np.ones((4, 1, 1), np.float32)}, model, state)
    with pytest.raises(ValueError, match=r"'bn.running_var': expected shape \(4,\)"):
        torch_to_equinox({**sd, "bn.running_var": np.ones(3, np.float32)}, model, state)
    with pytest.raises(TypeError, match="^torch_to_equinox: expected a state dict"):
        torch_to_equinox(list(sd.items()), model, state)
    with pytest.raises(TypeError, match="^equinox_to_torch_state_dict: expected state to be an eqx.nn.State"):
        equinox_to_torch_state_dict(model, {})
    with pytest.raises(ValueError, match=r"^equinox_to_torch_state_dict: the state holds no running statistics for "
                                         r"the layer 'bn' \(BatchNorm2d\)"):
        equinox_to_torch_state_dict(model, eqx.nn.State(jeqx.LayerNorm(2)))
    loaded, loaded_state = torch_to_equinox({**sd, "extra.weight": np.ones(2)}, model, state, strict=False)
    np.testing.assert_array_equal(loaded.embed.weight, sd["embed.weight"])
    # a missing counter (pre-0.4.1 checkpoint) loads as 0; a counter the model has no place for is ignored
    _, zero = torch_to_equinox({**{k: v for k, v in sd.items() if k != "bn.num_batches_tracked"},
                                "norms.gn.num_batches_tracked": np.array(3)}, model, state)
    assert int(zero.get(model.bn.state_index)["num_batches_tracked"]) == 0
    # the inputs stay usable (Equinox's State.set would have invalidated the caller's state) and unchanged
    assert int(state.get(model.bn.state_index)["num_batches_tracked"]) == 7
    assert not np.array_equal(model.embed.weight, sd["embed.weight"])
    assert equinox_to_torch_state_dict(model, state).keys() == TORCH_SHAPES.keys()


@pytest.mark.parametrize("layer,message", [
    (lambda key: eqx.nn.ConvTranspose2d(2, 3, 3, key=key), r"^equinox_to_torch_state_dict: 1 \(ConvTranspose2d\) "
                                                            r"has no PyTorch state-dict layout here: its weight is "
                                                            r"laid out"),
    (lambda key: eqx.nn.BatchNorm(3, "batch", mode="batch"), r"^equinox_to_torch_state_dict: 1 \(BatchNorm\) has no "
                                                             r"PyTorch state-dict layout here: its running statistics "
                                                             r"are not PyTorch's"),
])
def test_layers_without_a_pytorch_layout_are_named(layer, message):
    model, state = eqx.filter_eval_shape(eqx.nn.make_with_state(lambda: [eqx.nn.Linear(2, 2, key=jax.random.key(0)),
                                                                         layer(jax.random.key(1))]))
    with pytest.raises(ValueError, match=message):
        equinox_to_torch_state_dict(model, state)


# --------------------------------------------------------------------------------------------------- ResNet
class Block(eqx.Module):
    """torchvision's BasicBlock: conv3x3-bn-relu-conv3x3-bn, plus the (downsampled) input, relu."""

    conv1: eqx.nn.Conv2d
    bn1: jeqx.BatchNorm2d
    conv2: eqx.nn.Conv2d
    bn2: jeqx.BatchNorm2d
    downsample: eqx.nn.Sequential | None

    def __init__(self, cin, cout, stride, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, use_bias=False, key=k1)
        self.bn1 = jeqx.BatchNorm2d(cout)
        self.conv2 = eqx.nn.Conv2d(cout, cout, 3, padding=1, use_bias=False, key=k2)
        self.bn2 = jeqx.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else eqx.nn.Sequential(
            [eqx.nn.Conv2d(cin, cout, 1, stride=stride, use_bias=False, key=k3), jeqx.BatchNorm2d(cout)])

    def __call__(self, x, state):
        out, state = self.bn1(self.conv1(x), state)
        out, state = self.bn2(self.conv2(jax.nn.relu(out)), state)
        identity, state = (x, state) if self.downsample is None else self.downsample(x, state)
        return jax.nn.relu(out + identity), state


class ResNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    bn1: jeqx.BatchNorm2d
    layer1: list
    layer2: list
    fc: eqx.nn.Linear

    def __init__(self, key):
        keys = jax.random.split(key, 6)
        self.conv1, self.bn1 = eqx.nn.Conv2d(3, 8, 3, padding=1, use_bias=False, key=keys[0]), jeqx.BatchNorm2d(8)
        self.layer1 = [Block(8, 8, 1, keys[1]), Block(8, 8, 1, keys[2])]
        self.layer2 = [Block(8, 16, 2, keys[3]), Block(16, 16, 1, keys[4])]
        self.fc = eqx.nn.Linear(16, 5, key=keys[5])

    def __call__(self, x, state):  # one image (3, H, W)
        x, state = self.bn1(self.conv1(x), state)
        x = jax.nn.relu(x)
        for block in (*self.layer1, *self.layer2):
            x, state = block(x, state)
        return self.fc(jnp.mean(x, axis=(1, 2))), state


def _torch_resnet(torch):
    nn = torch.nn

    class TorchBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class TorchResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
            self.layer1 = nn.Sequential(TorchBlock(8, 8, 1), TorchBlock(8, 8, 1))
            self.layer2 = nn.Sequential(TorchBlock(8, 16, 2), TorchBlock(16, 16, 1))
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))

    return TorchResNet()


@pytest.mark.slow  # compiling the vmapped ResNet's forward and backward takes ~10 s here
def test_torchvision_style_resnet_ports_both_ways():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = _torch_resnet(torch)
    optimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):  # non-trivial weights and running statistics
        loss = torch.nn.functional.cross_entropy(tmodel(torch.randn(6, 3, 8, 8) * 2 + 1), torch.arange(6) % 5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model, state = torch_to_equinox(tmodel.state_dict(), *eqx.filter_eval_shape(eqx.nn.make_with_state(ResNet),
                                                                                  jax.random.key(0)))
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    ct = RNG.standard_normal((4, 5)).astype(np.float32)

    @eqx.filter_jit  # one program: the eval forward, then a train-mode forward and its gradients
    def forward(model, state, x):
        def run(model, state):
            return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)

        def loss(model):
            y, new_state = run(model, state)
            return jnp.sum(y * ct), (y, new_state)
        y_eval, state_eval = run(eqx.nn.inference_mode(model), state)
        (_, (y, new_state)), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        return y_eval, state_eval, y, new_state, grads

    before = equinox_to_torch_state_dict(model, state)
    y_eval, state_eval, y, state, grads = forward(model, state, x)
    tmodel.eval()
    with torch.no_grad():
        np.testing.assert_allclose(y_eval, tmodel(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    for key, value in equinox_to_torch_state_dict(model, state_eval).items():  # eval moved nothing
        np.testing.assert_array_equal(value, before[key], err_msg=key)

    tmodel.train()
    tmodel.zero_grad()
    y_torch = tmodel(torch.from_numpy(x))
    (y_torch * torch.from_numpy(ct)).sum().backward()
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-5, atol=1e-5)
    sd, want_sd = equinox_to_torch_state_dict(model, state), tmodel.state_dict()
    assert list(sd) == list(want_sd)  # the same keys in the same order (fields declared as torch registers them)
    for key, value in want_sd.items():  # the train-mode forward moved both models' running statistics alike
        assert sd[key].dtype == value.numpy().dtype, key
        np.testing.assert_allclose(sd[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert int(sd["layer2.0.downsample.1.num_batches_tracked"]) == 3
    grad_sd = equinox_to_torch_state_dict(grads, state)  # the gradients under PyTorch's names and layouts
    for key, parameter in tmodel.named_parameters():
        np.testing.assert_allclose(grad_sd[key], parameter.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)

    fresh = _torch_resnet(torch)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sd[key])
