"""``import jaxnorm`` costs jax and the pure functions only: neither Flax API (nor torch, Keras, Equinox, Haiku) is
imported until a name that needs it is used (``recalibrate_batch_stats`` and ``jaxnorm.activations``, which serve
linen models too, import flax.linen but not flax.nnx); then that name works (jaxnorm.migrate's and the Equinox
interop's too; the Equinox names are listed where Equinox is installed, and say what to install where it is not),
and every public name is listed and found."""

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
import flax.linen
linen_loads_nnx = "flax.nnx" in sys.modules  # not in the versions tested; this test does not depend on it
recalibrate, activation_stats = jaxnorm.recalibrate_batch_stats, jaxnorm.activations.activation_stats
report["linen_tools_load_no_nnx"] = linen_loads_nnx or "flax.nnx" not in sys.modules
freeze = jaxnorm.freeze_batch_norm
import jaxnorm.freeze
report["freeze_is_the_function"] = freeze is jaxnorm.freeze.freeze_batch_norm
report["flax_nnx_after_use"] = "flax.nnx" in sys.modules
report["optional_after_flax_use"] = sorted(m for m in ("torch", "keras", "equinox", "haiku") if m in sys.modules)
import jaxnorm.migrate
report["migrate_names"] = all(getattr(jaxnorm, n) is getattr(jaxnorm.migrate, n) for n in
                              ("from_flax_batch_norm", "from_keras_batch_norm", "from_haiku_batch_norm",
                               "convert_flax_variables", "batch_norm_options", "momentum_from_decay"))
import importlib.util
has_equinox = importlib.util.find_spec("equinox") is not None
report["equinox_listed_where_installed"] = has_equinox == ("torch_to_equinox" in jaxnorm.__all__)
if has_equinox:
    to_eqx = jaxnorm.torch_to_equinox
    import jaxnorm.equinox
    report["equinox_names"] = (to_eqx is jaxnorm.equinox.torch_to_equinox and jaxnorm.equinox_to_torch_state_dict
                               is jaxnorm.equinox.equinox_to_torch_state_dict and jaxnorm.equinox is jaxnorm.equinox)
else:
    try:
        jaxnorm.torch_to_equinox
    except ModuleNotFoundError as e:
        report["equinox_names"] = "pip install 'jaxnorm[equinox]'" in str(e)
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
    assert report == {"after_import": [], "linen_tools_load_no_nnx": True, "freeze_is_the_function": True,
                      "flax_nnx_after_use": True, "optional_after_flax_use": [], "migrate_names": True,
                      "equinox_listed_where_installed": True, "equinox_names": True, "missing_from_dir": [],
                      "not_found": []}


def test_an_unknown_name_is_an_attribute_error():
    import jaxnorm

    try:
        jaxnorm.batch_normalize  # noqa: B018
    except AttributeError as e:
        assert "module 'jaxnorm' has no attribute 'batch_normalize'" in str(e)
    else:
        raise AssertionError("jaxnorm.batch_normalize did not raise AttributeError")
