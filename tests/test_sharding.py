"""`flowvi.fit(mesh=...)` and `flowvi fit --devices N` on 4 simulated CPU devices, against one device.

JAX fixes its device count at import, and this test session has one CPU
device. So `test_on_four_simulated_devices` runs this file's ``check_*``
functions in a pytest subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; in the normal session
they are not collected (pytest collects ``test_*`` only). To run them directly:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m pytest tests/test_sharding.py -o python_functions='check_*'
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import flowvi
from flowvi import reverse_kl
from flowvi.cli import main
from flowvi.control_variates import with_control_variates
from flowvi.schedules import default_optimizer
from flowvi.sharding import make_layout, put
from models.banana import log_density as banana

NUM_DEVICES = 4
HERE = Path(__file__).resolve()
BANANA_FILE = str(HERE.parents[1] / "models" / "banana.py")


def test_on_four_simulated_devices():
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
           "-o", "python_functions=check_*", "-o", "addopts="]
    result = subprocess.run(cmd, env=env, cwd=HERE.parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"4-device checks failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


# ---- run in the 4-device subprocess -------------------------------------------------------------

def flat(post):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(post.params)])


def assert_same_fit(sharded, single):
    np.testing.assert_allclose(flat(sharded), flat(single), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sharded.losses, single.losses, rtol=1e-4, atol=1e-4)


@pytest.fixture
def mesh():
    assert jax.device_count() == NUM_DEVICES, "run through test_on_four_simulated_devices"
    return jax.make_mesh((NUM_DEVICES,), ("batch",))


def logistic(X, y):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        logits = numpyro.subsample(X, event_dim=1) @ w
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=numpyro.subsample(y, event_dim=0))


def logistic_data(n, p=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)).astype(np.float32)
    return X, (rng.random(n) < 1 / (1 + np.exp(-X @ np.ones(p)))).astype(np.float32)


def gaussian_mean_target(n):
    rows = np.random.default_rng(1).normal(1.0, 1.0, size=(n, 2)).astype(np.float32)
    return flowvi.Target(log_prior=lambda x: -0.5 * jnp.sum(x ** 2),
                         log_likelihood=lambda x, r: -0.5 * jnp.sum((r - x) ** 2), data=rows, dim=2)


def check_monte_carlo_batch_split_over_devices_matches_single_device(mesh):
    kw = dict(flow="affine_coupling", layers=1, hidden=(4,), steps=10, num_samples=32, key=jax.random.key(0))
    sharded = flowvi.fit(banana, dim=2, mesh=mesh, **kw)
    assert_same_fit(sharded, flowvi.fit(banana, dim=2, **kw))
    assert sharded.settings["mesh"] == "4 devices split by batch"
    # The draws u: (32, dim) of the single run are split 4 ways along the sample axis.
    layout = make_layout(mesh, 1, 32, has_data=False)
    config = reverse_kl._ReverseKLConfig(sharded.flow, banana, default_optimizer(5e-3), 32,
                                         "reparam", 20, 20, layout)
    states = put(reverse_kl._init_runs(sharded.flow, config.optimizer, 1, jax.random.key(0), jnp.int32(20),
                                       jnp.float32(0.0)),
                 layout.state_sharding())
    keys = put(jax.random.split(jax.random.key(1), 1), layout.state_sharding())
    hlo = reverse_kl._run_chunk.lower(config, states, keys, jnp.int32(20), jnp.ones(1, bool)).as_text()
    assert '[{"batch"}, {}]> : tensor<32x2xf32>' in hlo


def check_one_run_per_device_matches_single_device(mesh):
    kw = dict(flow="gaussian", steps=10, num_samples=16, num_runs=4, key=jax.random.key(0))
    # Any axis name; an Auto axis as well as jax.make_mesh's default Explicit one.
    auto = jax.make_mesh((NUM_DEVICES,), ("devices",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = flowvi.fit(banana, dim=2, mesh=auto, **kw)
    before = reverse_kl._run_chunk._cache_size()
    flowvi.fit(banana, dim=2, mesh=auto, **kw)
    assert reverse_kl._run_chunk._cache_size() == before  # a refit on the same mesh compiles nothing
    single = flowvi.fit(banana, dim=2, **kw)
    assert_same_fit(sharded, single)
    assert sharded.num_runs == 4 and sharded.settings["mesh"] == "4 devices split by runs"
    # The posterior holds ordinary arrays: it samples like a single-device one.
    np.testing.assert_allclose(sharded.sample(jax.random.key(1), 5), single.sample(jax.random.key(1), 5),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1001, 1000])  # 1001: padded to split evenly, padding masked out
def check_sharded_data_gives_the_same_log_density(mesh, n):
    target = gaussian_mean_target(n)
    layout = make_layout(mesh, 1, 8, has_data=True)
    spec = target.data_spec(None, NUM_DEVICES)
    data = reverse_kl._place_data(spec, layout)
    rows = data[0]
    assert rows.sharding.spec[0] == "batch" and rows.shape[0] % NUM_DEVICES == 0
    xs = jax.random.normal(jax.random.key(0), (5, 2))
    sharded = jax.jit(jax.vmap(spec.log_density, (0, None, None)))(xs, data, None)
    np.testing.assert_allclose(sharded, jax.vmap(target.log_density)(xs), rtol=1e-5)
    # Minibatches: the same rows whether the data is split or not.
    sub = target.data_spec(64, NUM_DEVICES)
    unsplit = jax.device_put(sub.data)
    for key in jax.random.split(jax.random.key(1), 3):
        np.testing.assert_allclose(jax.jit(sub.log_density)(xs[0], data, key),
                                   jax.jit(sub.log_density)(xs[0], unsplit, key), rtol=1e-5)


def check_sharded_numpyro_data_gives_the_same_log_density(mesh):
    target = flowvi.Target.from_numpyro(logistic, *logistic_data(1000))
    spec = target.data_spec(None, NUM_DEVICES)
    assert spec.data_axis == (True, True) and spec.num_data == 1000
    data = reverse_kl._place_data(spec, make_layout(mesh, 1, 8, has_data=True))
    assert all(a.sharding.spec[0] == "batch" for a in data)
    xs = jax.random.normal(jax.random.key(0), (5, 2))
    np.testing.assert_allclose(jax.jit(jax.vmap(spec.log_density, (0, None, None)))(xs, data, None),
                               jax.vmap(target.log_density)(xs), rtol=1e-5)


def check_control_variate_estimate_is_the_same_on_a_mesh(mesh):
    # The full-data expansion is a sharded reduction over the split (and, at N = 1001, padded) rows; the
    # controlled minibatch estimate with the same key matches the single-device one.
    layout = make_layout(mesh, 1, 8, has_data=True)
    xs = jax.random.normal(jax.random.key(0), (5, 2)) * 0.1 + 0.9
    keys = jax.random.split(jax.random.key(1), 3)
    rows = np.random.default_rng(2).normal(size=(1001, 2)).astype(np.float32)
    logistic_keyword = flowvi.Target(
        log_prior=lambda x: -0.5 * jnp.sum(x ** 2), data=(rows, (rows @ np.ones(2) > 0).astype(np.float32)),
        log_likelihood=lambda x, r: r[1] * (r[0] @ x) - jnp.logaddexp(0.0, r[0] @ x), dim=2)
    for target in (logistic_keyword, flowvi.Target.from_numpyro(logistic, *logistic_data(1000))):
        center = jnp.array([0.8, 1.1])
        results = []
        for shards in (NUM_DEVICES, 1):
            sub, full = target.data_spec(64, shards), target.data_spec(None, shards)
            if shards == 1:
                density, data = with_control_variates(sub.log_density, full.log_density, jax.device_put(sub.data),
                                                      center, 2)
            else:
                density, data = with_control_variates(
                    sub.log_density, full.log_density, reverse_kl._place_data(sub, layout),
                    put(center, layout.replicated()), 2, layout.replicated())
                assert jax.tree.leaves(data[0])[0].sharding.spec[0] == "batch"
            each = jax.jit(jax.vmap(jax.value_and_grad(density), (0, None, None)))
            results.append([each(xs, data, key) for key in keys])
            results[-1].append(data[1])
        for sharded, single in zip(*results, strict=True):
            for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def check_sharded_data_fit_matches_single_device(mesh):
    kw = dict(flow="gaussian", steps=10, num_samples=8, key=jax.random.key(0))
    target = gaussian_mean_target(1001)
    sharded = flowvi.fit(target, mesh=mesh, subsample=32, **kw)
    assert sharded.settings["control_variates"].startswith("second-order")  # on by default with subsample
    assert_same_fit(sharded, flowvi.fit(target, subsample=32, **kw))
    numpyro_target = flowvi.Target.from_numpyro(logistic, *logistic_data(400))
    sharded = flowvi.fit(numpyro_target, mesh=mesh, subsample=40, **kw)
    assert_same_fit(sharded, flowvi.fit(numpyro_target, subsample=40, **kw))
    assert sharded.settings["mesh"] == "4 devices split by data"


def check_bad_mesh_input_is_named(mesh):
    kw = dict(dim=2, flow="gaussian", steps=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples=10 does not divide over the mesh's 4 devices"):
        flowvi.fit(banana, num_samples=10, mesh=mesh, **kw)
    with pytest.raises(ValueError, match="num_runs=6 does not divide over the mesh's 4 devices"):
        flowvi.fit(banana, num_runs=6, mesh=mesh, **kw)
    with pytest.raises(ValueError, match="exactly one axis"):
        flowvi.fit(banana, mesh=jax.make_mesh((2, 2), ("a", "b")), **kw)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        flowvi.fit(banana, mesh=jax.devices(), **kw)
    with pytest.raises(ValueError, match="does not divide over the mesh's 4 devices"):
        flowvi.fit(flowvi.Target.from_numpyro(logistic, *logistic_data(1001)), mesh=mesh, flow="gaussian",
                   steps=2, key=jax.random.key(0))


def check_cli_devices_spreads_the_fit_and_matches_one_device(mesh, tmp_path, capsys):
    # `flowvi fit --devices 2` on this 4-device host: the Monte Carlo batch (8 draws) split over 2 devices.
    fit = ["fit", BANANA_FILE, "--flow", "gaussian", "--steps", "20", "--runs", "1", "--num-samples", "8",
           "--draws", "200", "--no-progress"]
    for n in (2, 1):
        assert main([*fit, "--devices", str(n), "--out", str(tmp_path / str(n))]) == 0
    capsys.readouterr()
    two, one = flowvi.load(tmp_path / "2" / "flow.flowvi"), flowvi.load(tmp_path / "1" / "flow.flowvi")
    assert two.settings["mesh"] == "2 devices split by batch"
    assert one.settings["mesh"] == "1 devices split by batch"
    for x, y in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)  # the same fit, up to reduction order
