"""Test configuration: CPU, float32 by default, and the x64 fixture. Shared helpers are in helpers.py."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The command line turns JAX's compilation cache on (flowvi.cache); the tests that call it must not write to ~/.cache.
os.environ.setdefault("FLOWVI_CACHE", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64 (for derivative checks), restoring float32 after."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)
