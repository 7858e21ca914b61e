"""A real PyTorch LeNet_bn (the lesson's class) loaded into ``experiments.models.LeNetBN``: same logits.

Also: folding bn1/bn2/bn3 into conv1/conv2/fc1 gives ``experiments.models.LeNet`` variables with the same
eval-mode logits (the ``--export-folded`` recipe).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
from experiments.common import compile
from experiments.common.models import LeNet, LeNetBN
from jaxnorm.interop import flax_to_torch_state_dict, torch_to_flax_variables

FOLDS = (("conv1", "bn1"), ("conv2", "bn2"), ("fc1", "bn3"))  # (layer, the BN that follows it)


def _torch_lenet_bn(torch):
    nn, F = torch.nn, torch.nn.functional

    class LeNet_bn(nn.Module):  # verbatim from the lesson (seed.md)
        def __init__(self, classes):
            super(LeNet_bn, self).__init__()  # noqa: UP008 (kept verbatim)
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.bn1 = nn.BatchNorm2d(num_features=6)

            self.conv2 = nn.Conv2d(6, 16, 5)
            self.bn2 = nn.BatchNorm2d(num_features=16)

            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.bn3 = nn.BatchNorm1d(num_features=120)

            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, classes)

        def forward(self, x):
            out = self.conv1(x)
            out = self.bn1(out)
            out = F.relu(out)

            out = F.max_pool2d(out, 2)

            out = self.conv2(out)
            out = self.bn2(out)
            out = F.relu(out)

            out = F.max_pool2d(out, 2)

            out = out.view(out.size(0), -1)

            out = self.fc1(out)
            out = self.bn3(out)
            out = F.relu(out)

            out = F.relu(self.fc2(out))
            out = self.fc3(out)
            return out

    return LeNet_bn


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_torch_lenet_bn_weights_give_same_logits():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tnet = _torch_lenet_bn(torch)(classes=2)
    with torch.no_grad():  # non-trivial BN parameters and running statistics (two training-mode batches)
        for name, p in tnet.named_parameters():
            if name.startswith("bn"):
                p.copy_(1 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
        tnet.train()
        for _ in range(2):
            tnet(torch.randn(8, 3, 32, 32) * 2 + 0.5)

    model = LeNetBN(classes=2)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    variables = torch_to_flax_variables(tnet.state_dict(), template)  # strict: every key used
    # round trip back to PyTorch's state dict is exact
    back = flax_to_torch_state_dict(variables)
    assert list(sorted(back)) == sorted(tnet.state_dict())
    for key, value in tnet.state_dict().items():
        assert back[key].dtype == value.numpy().dtype, key
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)

    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    diffs = {}

    tnet.eval()
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc)
    diffs["eval logits"] = _max_diff(got, want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    tnet.train()
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    got, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x_nhwc)
    diffs["train logits"] = _max_diff(got, want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    updated = flax_to_torch_state_dict({"batch_stats": state["batch_stats"]})
    for key, value in updated.items():  # the running statistics after that train step agree too
        diffs[key] = _max_diff(value, tnet.state_dict()[key].numpy())
        np.testing.assert_allclose(value, tnet.state_dict()[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert int(updated["bn1.num_batches_tracked"]) == 3
    print("max |jax - torch|:", {k: f"{v:.2e}" for k, v in diffs.items()})


def fold_lenet_bn(variables) -> dict:
    """LeNetBN variables -> LeNet variables with each eval-mode BN folded into the layer before it."""
    params = dict(variables["params"])
    for layer, bn in FOLDS:
        kernel, bias = jn.fold_batch_norm(params[layer]["kernel"], params[layer]["bias"], params.pop(bn),
                                          variables["batch_stats"][bn], out_axis=-1)
        params[layer] = {"kernel": kernel, "bias": bias}
    return {"params": params}


def test_folded_lenet_bn_equals_unfolded_in_eval_mode():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((5, 32, 32, 3)).astype(np.float32))
    model = LeNetBN(classes=2)
    variables = compile.jit_quick_compile(lambda x: model.init(jax.random.key(1), x, train=False))(x)  # as runs do
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1])
    for _ in range(3):  # running statistics from a few training steps, BN affine parameters perturbed
        variables = {**variables, **train(variables, x * 2 + 1)}
    variables["params"] = {k: ({n: a + 0.2 * jnp.asarray(rng.standard_normal(a.shape), a.dtype) for n, a in v.items()}
                               if k.startswith("bn") else v) for k, v in variables["params"].items()}

    folded = fold_lenet_bn(variables)
    plain = LeNet(classes=2)
    assert jax.tree.structure(folded) == jax.tree.structure(jax.eval_shape(plain.init, jax.random.key(0), x))
    want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    got = jax.jit(plain.apply)(folded, x)
    print(f"max |folded - unfolded| logits: {_max_diff(got, want):.2e}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
