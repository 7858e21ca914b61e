"""Bad input: a ValueError/TypeError at trace time (eagerly and under jit) naming what was expected and got."""

import jax
import jax.numpy as jnp
import pytest

import jaxnorm as jn

P3, S3 = jn.batch_norm_init(3)
P4, S4 = jn.batch_norm_init(4)
X4 = jnp.ones((2, 3, 4, 4))

# (case id, call, exception type, regex the message must match — expected AND got)
CASES = [
    ("bn1d rank", lambda x: jn.batch_norm_1d(x, P3, S3, train=True), ValueError, r"2-D or 3-D.*got 4-D"),
    ("bn2d rank", lambda x: jn.batch_norm_2d(x[0], P3, S3, train=True), ValueError, r"4-D.*got 3-D"),
    ("bn3d rank", lambda x: jn.batch_norm_3d(x, P3, S3, train=True), ValueError, r"5-D.*got 4-D"),
    ("bn params channels", lambda x: jn.batch_norm_2d(x, P4, S3, train=True), ValueError,
     r"params\['weight'\] has shape \(4,\), expected \(3,\)"),
    ("bn stats channels", lambda x: jn.batch_norm_2d(x, P3, S4, train=True), ValueError,
     r"running_mean'\] has shape \(4,\), expected \(3,\)"),
    ("bn stats channels (non-affine)", lambda x: jn.batch_norm_2d(x, {}, S4, train=False), ValueError,
     r"expected \(3,\)"),
    ("bn single value per channel", lambda x: jn.batch_norm_1d(x[:1, :, 0, 0], P3, S3, train=True), ValueError,
     r"more than 1 value per channel.*\(1, 3\)"),
    ("bn integer input", lambda x: jn.batch_norm_2d(x.astype(jnp.int32), P3, S3, train=True), TypeError,
     r"floating-point.*got dtype int32"),
    ("bn bool input", lambda x: jn.batch_norm_2d(x > 0, P3, S3, train=True), TypeError, r"got dtype bool"),
    ("bn axis out of range", lambda x: jn.batch_norm(x, P3, S3, train=True, axis=4), ValueError,
     r"axis 4 is out of range for a 4-D"),
    ("bn batch axis", lambda x: jn.batch_norm(x, P3, S3, train=True, axis=0), ValueError,
     r"channel axis must not be the batch axis 0"),
    ("bn mask shape", lambda x: jn.batch_norm_2d(x, P3, S3, train=True, mask=jnp.ones((2, 2, 1, 1), bool)),
     ValueError, r"mask of shape \(2, 2, 1, 1\) does not broadcast to the input's shape \(2, 3, 4, 4\)"),
    ("bn mask dtype", lambda x: jn.batch_norm_2d(x, P3, S3, train=True, mask=jnp.ones((2, 1, 1, 1))), TypeError,
     r"boolean mask.*got dtype float32"),
    ("bn virtual batch", lambda x: jn.batch_norm_2d(x, P3, S3, train=True, virtual_batch_size=3), ValueError,
     r"virtual_batch_size \(3\) must divide the batch size \(2\)"),
    ("bn groups without axis_name", lambda x: jn.batch_norm_2d(x, P3, S3, train=True, axis_index_groups=[[0]]),
     ValueError, r"needs axis_name"),
    ("renorm r_max", lambda x: jn.batch_renorm(x, P3, S3, train=True, r_max=0.9), ValueError,
     r"expected r_max >= 1.0, got r_max=0.9"),
    ("bn missing stats key", lambda x: jn.batch_norm_2d(x, P3, {"running_mean": S3["running_mean"]}, train=True),
     ValueError, r"missing \['num_batches_tracked', 'running_var'\]"),
    ("bn extra stats key", lambda x: jn.batch_norm_2d(x, P3, {**S3, "mean": S3["running_mean"]}, train=True),
     ValueError, r"unexpected \['mean'\]"),
    ("bn extra params key", lambda x: jn.batch_norm_2d(x, {**P3, "scale": P3["weight"]}, S3, train=True),
     ValueError, r"unexpected \['scale'\]"),
    ("bn momentum", lambda x: jn.batch_norm_2d(x, P3, S3, train=True, momentum=2.0), ValueError,
     r"momentum in \[0, 1\].*got 2.0"),
    ("in1d rank", lambda x: jn.instance_norm_1d(x, {}, {}, train=True), ValueError, r"2-D or 3-D.*got 4-D"),
    ("in2d rank", lambda x: jn.instance_norm_2d(x[0, 0], {}, {}, train=True), ValueError, r"3-D or 4-D.*got 2-D"),
    ("in3d rank", lambda x: jn.instance_norm_3d(x[0], {}, {}, train=True), ValueError, r"4-D or 5-D.*got 3-D"),
    ("in single spatial element", lambda x: jn.instance_norm_2d(x[:, :, :1, :1], {}, {}, train=True), ValueError,
     r"more than 1 spatial element"),
    ("gn not divisible", lambda x: jn.group_norm(x, {}, 2), ValueError, r"num_channels \(3\).*num_groups \(2\)"),
    ("gn more groups than channels", lambda x: jn.group_norm(x, {}, 6), ValueError, r"num_channels \(3\).*\(6\)"),
    ("gn rank", lambda x: jn.group_norm(x[0, 0, 0], {}, 1), ValueError, r"at least 2-D.*got 1-D"),
    ("gn params", lambda x: jn.group_norm(x, jn.group_norm_init(1, 4), 1), ValueError, r"expected \(3,\)"),
    ("ln shape", lambda x: jn.layer_norm(x, {}, (3, 4)), ValueError, r"normalized_shape \(3, 4\).*\(2, 3, 4, 4\)"),
    ("ln params", lambda x: jn.layer_norm(x, jn.layer_norm_init(5), 4), ValueError, r"\(5,\), expected \(4,\)"),
    ("ln rank", lambda x: jn.layer_norm(x[0, 0, 0], {}, (4, 4)), ValueError, r"trailing dims.*\(4,\)"),
    ("rms shape", lambda x: jn.rms_norm(x, {}, 5), ValueError, r"normalized_shape \(5,\)"),
    ("rms bias", lambda x: jn.rms_norm(x, {"weight": jnp.ones(4), "bias": jnp.ones(4)}, 4), ValueError,
     r"only 'weight'"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(call, exc, pattern, jit):
    fn = jax.jit(call) if jit else call
    with pytest.raises(exc, match=pattern):
        fn(X4)


@pytest.mark.parametrize("call, pattern", [
    (lambda: jn.batch_norm_init(0), r"num_features >= 1, got 0"),
    (lambda: jn.instance_norm_init(-2), r"num_features >= 1, got -2"),
    (lambda: jn.group_norm_init(4, 6), r"num_channels \(6\).*num_groups \(4\)"),
    (lambda: jn.group_norm_init(0, 6), r"num_groups >= 1, got 0"),
    (lambda: jn.layer_norm_init(()), r"normalized_shape"),
    (lambda: jn.rms_norm_init((3, 0)), r"normalized_shape"),
])
def test_bad_init_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_train_must_be_static_bool():
    with pytest.raises(TypeError, match="Python bool"):
        jax.jit(lambda x, t: jn.batch_norm_2d(x, P3, S3, train=t))(X4, True)
