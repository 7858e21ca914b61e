"""Every public normalization runs under ``jax.named_scope(<its name>)``, so its operations can be found by name in a
profile or an HLO dump: the lowered program's locations are ``jit(f)/<name>/<op>``."""

import jax
import jax.numpy as jnp
import pytest

import jaxnorm as jn

P3, S3 = jn.batch_norm_init(3)
CALLS = {  # name: (call, input shape)
    "batch_norm": (lambda x: jn.batch_norm(x, P3, S3, train=True), (4, 3, 2, 2)),
    "batch_norm_1d": (lambda x: jn.batch_norm_1d(x, P3, S3, train=True), (4, 3, 2)),
    "batch_norm_2d": (lambda x: jn.batch_norm_2d(x, P3, S3, train=False), (4, 3, 2, 2)),
    "batch_norm_3d": (lambda x: jn.batch_norm_3d(x, P3, S3, train=True), (4, 3, 2, 2, 2)),
    "batch_renorm": (lambda x: jn.batch_renorm(x, P3, S3, train=True), (4, 3)),
    "instance_norm": (lambda x: jn.instance_norm(x, {}, {}, train=True), (2, 3, 4)),
    "instance_norm_1d": (lambda x: jn.instance_norm_1d(x, {}, {}, train=True), (3, 4)),
    "instance_norm_2d": (lambda x: jn.instance_norm_2d(x, {}, {}, train=True), (2, 3, 2, 2)),
    "instance_norm_3d": (lambda x: jn.instance_norm_3d(x, {}, {}, train=True), (2, 3, 2, 2, 2)),
    "layer_norm": (lambda x: jn.layer_norm(x, jn.layer_norm_init(4), 4), (2, 4)),
    "rms_norm": (lambda x: jn.rms_norm(x, jn.rms_norm_init(4), 4), (2, 4)),
    "group_norm": (lambda x: jn.group_norm(x, jn.group_norm_init(3, 3), 3), (2, 3, 4)),
    "frozen_batch_norm": (lambda x: jn.frozen_batch_norm(x, P3, S3), (2, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_operations_carry_the_function_name(name):
    call, shape = CALLS[name]
    text = jax.jit(call).lower(jnp.ones(shape)).as_text(debug_info=True)
    assert f"jit(<lambda>)/{name}/" in text
