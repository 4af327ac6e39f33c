"""Bad input to flowvi.fit and the flow families: each error names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import banana_log_density

import flowvi
from flowvi import flows

KEY = jax.random.key(0)


def test_log_density_not_scalar():
    with pytest.raises(ValueError, match=r"log_density must return a scalar.*shape \(2,\)"):
        flowvi.fit(lambda x: x, dim=2, key=KEY, steps=1)


def test_log_density_non_finite_everywhere():
    with pytest.raises(ValueError, match="non-finite at all"):
        flowvi.fit(lambda x: jnp.log(-jnp.abs(x[0])), dim=2, key=KEY, steps=1)


def test_log_density_fails_to_trace():
    def broken(x):
        return float(x[0])  # concretisation error under tracing
    with pytest.raises(ValueError, match=r"log_density failed on an input of shape \(2,\)"):
        flowvi.fit(broken, dim=2, key=KEY, steps=1)


@pytest.mark.parametrize("dim", [None, 0, -1, 2.5, "2", True])
def test_bad_dim(dim):
    with pytest.raises(ValueError, match="dim"):
        flowvi.fit(banana_log_density, dim=dim, key=KEY, steps=1)


def test_log_density_not_callable():
    with pytest.raises(TypeError, match="log_density must be a callable"):
        flowvi.fit(np.zeros(3), dim=2, key=KEY)


def test_unknown_flow_lists_valid_ones():
    with pytest.raises(ValueError, match="'nice'.*'spline_coupling'"):
        flowvi.fit(banana_log_density, dim=2, flow="nice", key=KEY)


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(TypeError, match=r"'depth'.*layers"):
        flowvi.fit(banana_log_density, dim=2, flow="iaf", depth=3, key=KEY)
    with pytest.raises(TypeError, match=r"'depth'.*layers"):
        flows.make_flow("iaf", 2, depth=3)


@pytest.mark.parametrize(("kw", "error", "message"), [
    ({"steps": 0}, ValueError, "steps must be a positive integer, got 0"),
    ({"num_samples": -1}, ValueError, "num_samples must be a positive integer, got -1"),
    ({"learning_rate": -0.1}, ValueError, "learning_rate must be a positive finite number"),
    ({"estimator": "score"}, ValueError, "estimator='score' is not valid; expected one of 'reparam', 'stl'"),
    ({"num_runs": 0}, ValueError, "num_runs must be a positive integer"),
    ({"patience": 0}, ValueError, "patience must be a positive integer"),
    ({"optimizer": "adam"}, TypeError, "optimizer must be an optax.GradientTransformation, got str"),
])
def test_bad_fit_options(kw, error, message):
    # A bad value is a ValueError, a wrong type (a string for an optax optimizer) a TypeError.
    with pytest.raises(error, match=message) as info:
        flowvi.fit(banana_log_density, dim=2, flow="gaussian", key=KEY, **kw)
    assert type(info.value) is error


def test_key_required_and_checked():
    with pytest.raises(TypeError, match="key is required"):
        flowvi.fit(banana_log_density, dim=2, key=None)
    with pytest.raises(TypeError, match="PRNG key"):
        flowvi.fit(banana_log_density, dim=2, key=42)


@pytest.mark.parametrize(("family", "kw", "message"), [
    ("gaussian", {"covariance": "dense"}, "covariance"),
    ("iaf", {"transformer": "neural"}, "transformer"),
    ("spline_coupling", {"bins": 0}, "bins"),
    ("spline_coupling", {"bound": -1.0}, "bound"),
    ("affine_coupling", {"hidden": ()}, "hidden"),
    ("bnaf", {"block_size": (4, 0)}, r"block_size\[1\]"),
    ("maf", {"layers": 1.5}, "layers"),
])
def test_bad_hyperparameter_values(family, kw, message):
    with pytest.raises(ValueError, match=message):
        flows.make_flow(family, 2, **kw)


def test_coupling_needs_two_dimensions():
    with pytest.raises(ValueError, match="dim >= 2"):
        flows.make_flow("spline_coupling", 1)


def test_flow_object_with_other_dim():
    with pytest.raises(ValueError, match="dim=3"):
        flowvi.fit(banana_log_density, dim=2, flow=flows.gaussian(3), key=KEY)


def test_target_names_length():
    with pytest.raises(ValueError, match="names"):
        flowvi.Target(banana_log_density, 2, names=["a"])


def test_log_prob_shape_checked():
    post = flowvi.fit(banana_log_density, dim=2, flow="gaussian", steps=2, key=KEY)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        post.log_prob(jnp.zeros((4, 3)))
