"""The live PyTorch parity tests skip where torch is missing; CI installs it in both of its environments and sets
``JAXNORM_REQUIRE_TORCH=1`` (``.ci/run``), so that there a missing oracle fails here instead of skipping silently."""

import importlib.util
import os

import pytest


def test_the_parity_oracle_is_installed_where_ci_requires_it():
    if not os.environ.get("JAXNORM_REQUIRE_TORCH"):
        pytest.skip("JAXNORM_REQUIRE_TORCH is not set: only CI requires the oracle")
    assert importlib.util.find_spec("torch") is not None, "CI requires torch==2.13.0 for the live parity tests"
