"""Test configuration: CPU, float32 by default, the x64 fixture, and one compilation cache per session.

Shared helpers are in helpers.py.

Compilation is most of the suite's time, and much of it is the same program compiled again:
by each pytest-xdist worker, by the subprocesses (notebook kernels, the CLI, the multi-device
checks), and in one process whenever a test builds a new but identical target function (a
re-imported model file, another ``lambda x: -0.5 * jnp.sum(x ** 2)``), which misses jit's
in-memory cache. So the session shares JAX's persistent compilation cache: a fresh temporary
folder made here, before JAX is imported, inherited through the environment by the workers
and every subprocess, and removed at the end. The key is the program with its debug
information stripped (plus jaxlib, flags and devices), so a hit is the very executable a fresh
compilation would give: the same numbers, nothing checked differently.
``JAX_COMPILATION_CACHE_DIR`` set beforehand is used (and kept) instead, e.g. to keep the cache
between runs.

The shared cache is OFF unless ``FLOWVI_TEST_JAX_CACHE=1``: in one full run (jax/jaxlib 0.10.2,
CPU, two xdist workers) a worker died with "Fatal Python error: Aborted" inside
``executable.serialize()`` while writing a training chunk to the cache (jax's
compilation_cache.put_executable_and_time), in a test that passes on its own with the cache on.
A crash that loses a worker fails the run, so CI does not take that chance.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The command line turns JAX's compilation cache on (flowvi.cache); the tests that call it must not write to ~/.cache.
os.environ.setdefault("FLOWVI_CACHE", "0")

_OWN_CACHE = None
if os.environ.get("FLOWVI_TEST_JAX_CACHE", "0") == "1" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Only the first process to get here (the xdist controller, or a plain pytest) makes it.
    _OWN_CACHE = tempfile.mkdtemp(prefix="flowvi-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # JAX's default keeps only compilations over 1 s; the suite's many 0.2-1 s ones pay too.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

# The files whose tests take longest (notebooks, subprocesses, whole CLI pipelines) are collected
# first: with `-n 2 --dist worksteal` (pyproject's addopts) they start early, and the idle worker
# takes the short ones from the end of the other's queue, so both finish together. Other files
# keep their order; a file's tests stay together (module-scoped fixtures are made once).
SLOW_FILES_FIRST = ("test_notebooks.py", "test_sharding.py", "test_cli_main.py", "test_multihost.py",
                    "test_fault_injection.py")


# A test whose worker dies (a segfault or abort inside XLA) runs once more, in a fresh worker; a test
# that fails, or crashes twice, fails. In full runs (jax/jaxlib 0.10.2, CPU, two workers) a worker died
# inside XLA's compiler four times, in tests that pass on their own and in a new worker: twice
# compiling the 3-element `log(abs(scale))` of distrax's ScalarAffine under `jax.grad` in
# test_warm_start.py, late in the run. Crashes only: `only_rerun` matches xdist's crash report.
CRASH_RERUN = pytest.mark.flaky(reruns=1, only_rerun=["crashed while running"])


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort
    for item in items:
        item.add_marker(CRASH_RERUN)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def x64():
    """Run a test in float64 (for derivative checks), restoring float32 after."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)
