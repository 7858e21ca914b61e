"""``import jaxnorm`` costs jax and the pure functions only: neither Flax API (nor torch, Keras, Equinox, Haiku) is
imported until a name that needs it is used; then that name works, and every public name is listed and found."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = ("flax", "flax.linen", "flax.nnx", "torch", "keras", "equinox", "haiku")

PROGRAM = f"""
import json, sys
import jaxnorm
report = {{"after_import": sorted(m for m in {OPTIONAL!r} if m in sys.modules)}}
freeze = jaxnorm.freeze_batch_norm
import jaxnorm.freeze
report["freeze_is_the_function"] = freeze is jaxnorm.freeze.freeze_batch_norm
report["flax_nnx_after_use"] = "flax.nnx" in sys.modules
report["missing_from_dir"] = sorted(set(jaxnorm.__all__) - set(dir(jaxnorm)))
report["not_found"] = sorted(name for name in jaxnorm.__all__ if not hasattr(jaxnorm, name))
print(json.dumps(report))
"""


def test_import_jaxnorm_loads_no_front_end_until_one_is_used():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {"after_import": [], "freeze_is_the_function": True, "flax_nnx_after_use": True,
                      "missing_from_dir": [], "not_found": []}


def test_an_unknown_name_is_an_attribute_error():
    import jaxnorm

    try:
        jaxnorm.batch_normalize  # noqa: B018
    except AttributeError as e:
        assert "module 'jaxnorm' has no attribute 'batch_normalize'" in str(e)
    else:
        raise AssertionError("jaxnorm.batch_normalize did not raise AttributeError")
