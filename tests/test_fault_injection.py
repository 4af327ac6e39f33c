"""Fault injection in real processes: Ctrl-C (SIGINT) in the middle of a fit, and a save that
runs out of room halfway (a file-size limit).

Each Ctrl-C test starts a Python process on tiny fits with far more steps than can run, waits
for its first progress line on stderr (the fit is then under way), and sends SIGINT. The
library's process then also saves a fit over a file-size limit (one process start, not two).
"""

import os
import pathlib
import signal
import subprocess
import sys

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import standard_normal, tiny_gaussian_fit

import flowvi
from flowvi.cli.main import OUTPUTS
from flowvi.cli.model_file import load_model_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
TIMEOUT = 300
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")

LIBRARY_SCRIPT = """
import sys, warnings
import jax, jax.numpy as jnp, numpy as np, flowvi

folder, limited = sys.argv[1], sys.argv[2]
log_density = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)  # noqa: E731
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    post = flowvi.fit(log_density, 2, flow="gaussian", steps=10_000_000, num_runs=2, progress=True,
                      key=jax.random.key(0), init="standard")  # no warm start: the losses show training
    post.save(folder + "/fit.flowvi")
    print("fit warned:", " | ".join(str(w.message) for w in caught), flush=True)
    caught.clear()
    data = np.random.default_rng(0).normal(1.0, 1.0, size=(400, 2))
    post = flowvi.fit_samples(data, flow="gaussian", max_epochs=1_000_000, patience=None, progress=True,
                              key=jax.random.key(1))
    post.save(folder + "/samples.flowvi")
    print("fit_samples warned:", " | ".join(str(w.message) for w in caught), flush=True)

# A save that runs out of room halfway: the file already at `limited` must stay as it was.
if sys.platform == "linux":  # RLIMIT_FSIZE and SIGXFSZ as on Linux
    import resource, signal
    post = flowvi.fit(log_density, 2, flow="gaussian", steps=3000, num_runs=2, progress=False,
                      key=jax.random.key(1))  # the first fit's compilation; its loss trace alone is 24 kB
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit a write then fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        post.save(limited)
        print("saved")
    except OSError as err:
        print("save failed:", err)
"""


def _interrupt(command: list[str], triggers: list[str]) -> tuple[int, str, str]:
    """Run `command`; send SIGINT once per trigger, when a stderr line starting with it appears."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    seen = []
    try:
        for trigger in triggers:
            for line in proc.stderr:
                seen.append(line)
                if line.startswith(trigger):
                    proc.send_signal(signal.SIGINT)
                    break
            else:
                pytest.fail(f"no line starting with {trigger!r} on stderr:\n{''.join(seen)}")
        stdout, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, "".join(seen) + rest


@pytest.fixture(scope="module")
def library_process(tmp_path_factory):
    """LIBRARY_SCRIPT run once, interrupted in fit and in fit_samples; a saved fit at `limited` first."""
    folder, limited = tmp_path_factory.mktemp("library"), tmp_path_factory.mktemp("limit") / "fit.flowvi"
    tiny_gaussian_fit().save(limited)
    before = limited.read_bytes()
    rc, stdout, stderr = _interrupt([sys.executable, "-c", LIBRARY_SCRIPT, str(folder), str(limited)],
                                    ["flowvi: step", "flowvi: epoch"])
    return rc, stdout, stderr, folder, limited, before


def test_ctrl_c_returns_the_fit_so_far(library_process):
    rc, stdout, stderr, tmp_path, _, _ = library_process
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert "flowvi.fit: interrupted; stopping at the end of this step chunk" in stderr
    assert "flowvi.fit_samples: interrupted; stopping at the end of this epoch chunk" in stderr

    post = flowvi.load(tmp_path / "fit.flowvi", lambda x: -0.5 * jnp.sum((x - 1.0) ** 2))
    n = int(post.steps_run[0])
    assert post.stop_reasons == [f"interrupted at step {n}"] * 2
    assert f"fit warned: flowvi.fit was interrupted at step {n}; returning the fit so far." in stdout
    assert 100 <= n < 10_000_000 and n % 100 == 0  # whole chunks of 100 steps
    assert post.steps_run.tolist() == [n, n] and post.losses.shape == (2, n)
    assert np.all(np.isfinite(post.losses))
    # It trained: each run's mean loss over its last 50 steps is below that of its first 50.
    assert np.all(post.losses[:, -50:].mean(axis=1) < post.losses[:, :50].mean(axis=1))
    assert np.all(np.isfinite(post.sample(jax.random.key(0), 100)))

    samples = flowvi.load(tmp_path / "samples.flowvi")
    m = int(samples.steps_run[0])
    assert samples.stop_reasons == [f"interrupted at epoch {m}"] and 1 <= m < 1_000_000
    assert f"fit_samples warned: flowvi.fit_samples was interrupted at epoch {m}; returning the fit so far." in stdout
    assert len(samples.losses) == m and len(samples.validation_losses) == m
    assert np.all(np.isfinite(samples.log_prob(jnp.ones((3, 2)))))


def test_ctrl_c_in_the_cli_writes_the_outputs_and_exits_130(tmp_path):
    command = [sys.executable, "-m", "flowvi", "fit", str(ROOT / "models" / "banana.py"), "--flow", "gaussian",
               "--steps", "10000000", "--runs", "2", "--draws", "200", "--out", str(tmp_path)]
    rc, stdout, stderr = _interrupt(command, ["flowvi: step"])
    assert rc == 130, stderr
    assert "Traceback" not in stderr and "\r" not in stderr  # piped: plain progress lines, no bar
    lines = [line for line in stderr.splitlines() if line]
    assert lines[0] == "flowvi: compiling (the first steps include compilation) ..."
    assert lines[1].startswith("flowvi: step ")
    assert all(line.startswith("flowvi") for line in lines), stderr
    assert lines[-1].startswith("flowvi fit: interrupted (run 0: interrupted at step ")
    assert lines[-1].endswith("the outputs hold the fit so far.")
    assert any(line.startswith("flowvi: warning: flowvi.fit was interrupted at step ") for line in lines)
    for name in OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0
    assert sorted(os.listdir(tmp_path)) == sorted(OUTPUTS)
    assert "verdict:" in stdout and f"wrote {tmp_path / 'posterior.nc'}" in stdout

    post = flowvi.load(tmp_path / "flow.flowvi", load_model_file(ROOT / "models" / "banana.py").target())
    n = int(post.steps_run[0])
    assert post.stop_reasons == [f"interrupted at step {n}"] * 2 and n < 10_000_000
    attrs = az.from_netcdf(tmp_path / "posterior.nc").posterior.attrs
    assert attrs["stop_reason"] == post.stop_reason and attrs["steps_run"].tolist() == [n, n]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_save_that_hits_a_file_size_limit_keeps_the_old_file(library_process):
    rc, stdout, stderr, _, path, before = library_process
    assert rc == 0, stderr
    assert "\nsave failed: [Errno 27] File too large" in stdout, stdout
    assert path.read_bytes() == before
    loaded, old = flowvi.load(path, standard_normal), tiny_gaussian_fit()
    np.testing.assert_array_equal(loaded.sample(jax.random.key(2), 10), old.sample(jax.random.key(2), 10))
    assert loaded.steps_run.tolist() == [20]
    assert os.listdir(path.parent) == ["fit.flowvi"]  # the partial temporary file was removed
