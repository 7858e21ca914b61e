"""``python -m experiments.lenet`` with the default ``--api linen`` imports neither ``flax.nnx`` nor Equinox: the NNX
and Equinox models and steps (:mod:`experiments.common.models_nnx`, ``steps_nnx``, ``models_equinox``,
``steps_equinox``) and jaxnorm's NNX code paths (:mod:`jaxnorm._nnx_recalibrate`, :mod:`jaxnorm._nnx_activations`)
are imported only for a model of theirs. (Importing flax.nnx alone costs about 0.2 s of every run.)

In a fresh interpreter: the CLI module and every module the linen run uses, then the linen run's calls that choose
a front-end (the tasks of the three configs, precise BN's recalibration, the ``--inspect`` table's statistics, a
state's linen variables) on a linen model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json, sys
from experiments import lenet
from experiments.common import (bn_extras, checkpoint, compile, devices, images, models, plots, steps,
                                training)
import jax, jax.numpy as jnp
import jaxnorm, jaxnorm.activations, jaxnorm.interop, jaxnorm.linen, jaxnorm.recalibrate

data = images.load_dataset("synthetic", 1)
tasks = {c: lenet.make_task(c, lenet.RunConfig(), data) for c in lenet.CONFIGS}
bn = jaxnorm.linen.BatchNorm1d(2)
x = jnp.arange(8.0).reshape(4, 2)
variables = bn.init(jax.random.key(0), x, train=False)
jaxnorm.recalibrate_batch_stats(bn, variables, [x])
jaxnorm.activations.activation_stats(bn, variables, x, train=True)
steps.lenet_variables("bn", {"params": {}, "batch_stats": {}}, "linen")
print(json.dumps(sorted(m for m in ("flax.nnx", "equinox") if m in sys.modules)))
"""


def test_linen_run_imports_neither_flax_nnx_nor_equinox():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [], "loaded by the linen run"
