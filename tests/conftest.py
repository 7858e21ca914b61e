"""Shared test configuration: float32 everywhere unless a test opts in to float64 locally."""

import jax

jax.config.update("jax_enable_x64", False)
