"""The library's docstrings: every example runs and prints what it says (doctest, under the suite's strict
promotion), and every public module and name has an example and a reference.

Public: the modules of jaxnorm/ not named with a leading underscore, and the names in their ``__all__``.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import inspect
import io
import pkgutil

import pytest

import jaxnorm

MODULES = ["jaxnorm", *sorted(m.name for m in pkgutil.iter_modules(jaxnorm.__path__, "jaxnorm."))]
PUBLIC_MODULES = [name for name in MODULES if not name.rsplit(".", 1)[-1].startswith("_")]


def _import(name: str):
    """The module, or a skip when it needs a library this environment lacks (jaxnorm.equinox without Equinox)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "jaxnorm":
            raise
        pytest.skip(f"{name} needs {e.name}, which is not installed")


def _missing_library(test: doctest.DocTest) -> str | None:
    """A library the docstring's examples import that this environment lacks (Keras, Haiku and Equinox are not in
    the minimum-versions environment), or None."""
    for example in test.examples:
        for node in ast.walk(ast.parse(example.source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for top in {n.split(".")[0] for n in names}:
                if importlib.util.find_spec(top) is None:
                    return top
    return None


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = _import(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    tests = doctest.DocTestFinder().find(module, name)
    runnable = [test for test in tests if _missing_library(test) is None]
    for test in runnable:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
    if len(runnable) < len(tests):
        pytest.skip(f"{len(tests) - len(runnable)} docstring(s) of {name} import a library that is not installed")


def _lacks(obj: object) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    return [what for what, mark in (("example", ">>>"), ("reference", "References:")) if mark not in doc]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_has_an_example_and_a_reference(name):
    module = _import(name)
    assert hasattr(module, "__all__"), f"{name} declares no __all__"
    missing = {f"{name} (module)": _lacks(module)}
    missing.update({f"{name}.{attr}": _lacks(getattr(module, attr)) for attr in module.__all__})
    assert not {k: v for k, v in missing.items() if v}
