"""Bad arguments to every public entry point: each error names the argument and what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import standard_normal, tiny_gaussian_fit

import flowvi

KEY = jax.random.key(0)


_g = standard_normal


@pytest.fixture(scope="module")
def post():
    return tiny_gaussian_fit()


def _calls(post):
    """Every public entry point that takes a key, as ``key -> call``."""
    import flowvi.plots

    return {
        "sample": lambda k: post.sample(k, 3),
        "sample_and_log_prob": lambda k: post.sample_and_log_prob(k, 3),
        "sample_runs": lambda k: post.sample_runs(k, 3),
        "sample_posterior": lambda k: post.sample_posterior(k, 3),
        "diagnose": lambda k: post.diagnose(k, 100, iw_k=None),
        "diagnostics.diagnose": lambda k: flowvi.diagnostics.diagnose(post, k, 100, iw_k=None),
        "to_arviz": lambda k: post.to_arviz(k, 10),
        "plots.density": lambda k: flowvi.plots.density(post, k, num_draws=50, grid=10),
        "fit": lambda k: flowvi.fit(_g, 2, flow="gaussian", steps=2, key=k),
        "fit_samples": lambda k: flowvi.fit_samples(np.random.default_rng(0).normal(size=(20, 2)), flow="gaussian",
                                                    max_epochs=1, key=k),
    }


ENTRY_POINTS = ["sample", "sample_and_log_prob", "sample_runs", "sample_posterior", "diagnose",
                "diagnostics.diagnose", "to_arviz", "plots.density", "fit", "fit_samples"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_int_seed_is_not_a_key(post, entry):
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key such as jax.random.key\(1\), got the number 1"):
        _calls(post)[entry](1)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_batch_of_keys_is_not_a_key(post, entry):
    with pytest.raises(TypeError, match=r"key must be a single PRNG key, got a batch of keys of shape \(2,\)"):
        _calls(post)[entry](jax.random.split(KEY, 2))


def test_a_raw_key_is_accepted_and_means_the_same(post):
    raw = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(np.asarray(post.sample(raw, 4)),
                                  np.asarray(post.sample(jax.random.wrap_key_data(raw), 4)))


@pytest.mark.parametrize("method", ["sample", "sample_and_log_prob", "sample_runs", "sample_posterior",
                                    "diagnose", "to_arviz"])
@pytest.mark.parametrize("num_draws", [-1, 0, 2.5, "3", True])
def test_num_draws_must_be_a_positive_int(post, method, num_draws):
    with pytest.raises(ValueError, match=f"num_draws must be a positive integer, got {num_draws!r}"):
        getattr(post, method)(KEY, num_draws)


def test_numpy_int_num_draws_is_fine(post):
    assert post.sample(KEY, np.int64(3)).shape == (3, 2)


@pytest.mark.parametrize("call", [lambda p, k: p.diagnose(k, 100, iw_k=0),
                                  lambda p, k: flowvi.diagnostics.diagnose(p, k, 100, iw_k=0),
                                  lambda p, k: flowvi.diagnostics.diagnose(p, k, 100, iw_k=-5),
                                  lambda p, k: p.diagnose(k, 100, iw_k=2.5)])
def test_iw_k_zero_or_negative_gets_its_own_reason(post, call):
    # It used to say "iw_k=0 needs num_draws >= 2 * iw_k", which 100 draws satisfy.
    with pytest.raises(ValueError, match="iw_k must be a positive integer or None"):
        call(post, KEY)


@pytest.mark.parametrize(("i", "error", "message"), [
    ("0", TypeError, r"run index i must be an integer in \[0, 1\), got '0'"),
    (1.0, TypeError, r"must be an integer in \[0, 1\), got 1.0"),
    (True, TypeError, "must be an integer"),
    (1, IndexError, r"run index i=1 is out of range"),
    (-1, IndexError, r"i=-1 is out of range"),
])
def test_run_index(post, i, error, message):
    with pytest.raises(error, match=message):
        post.run(i)


@pytest.mark.parametrize(("x", "message"), [
    ("a", "x must be a real numeric array"),
    (np.array([[1 + 1j, 0]]), "x must be a real numeric array, got dtype complex"),
    (np.array([[True, False]]), "x must be a real numeric array, got dtype bool"),
    ([[0.0, 1.0, 2.0]], r"x must have shape \(n, 2\)"),
])
def test_log_prob_argument(post, x, message):
    with pytest.raises(ValueError, match=message):
        post.log_prob(x)


def test_log_prob_of_ints_is_that_of_floats(post):
    np.testing.assert_array_equal(np.asarray(post.log_prob(np.array([[1, 2]]))),
                                  np.asarray(post.log_prob(np.array([[1.0, 2.0]]))))


def test_sample_posterior_target_must_be_a_target(post):
    with pytest.raises(TypeError, match="target must be a flowvi.Target"):
        post.sample_posterior(KEY, 3, target=_g)


def test_a_string_is_not_a_list_of_names():
    # "theta" became five names, one per character.
    with pytest.raises(ValueError, match=r"names must be a list of 5 names.*got 'theta'; for a single name use"):
        flowvi.fit(_g, 5, flow="gaussian", names="theta", steps=2, key=KEY)
    with pytest.raises(ValueError, match="names must be a list of 1 names"):
        flowvi.Target(_g, 1, names="theta")


def test_names_must_be_distinct_and_can_be_any_iterable():
    with pytest.raises(ValueError, match="names must be distinct; repeated: 'a'"):
        flowvi.Target(_g, 3, names=["a", "b", "a"])
    assert flowvi.Target(_g, 2, names={"a": 0, "b": 1}.keys()).names == ["a", "b"]
    assert flowvi.Target(_g, 2, names=("a", 1)).names == ["a", "1"]


@pytest.mark.parametrize(("log_density", "dtype"), [
    (lambda x: 1, "int32"),
    (lambda x: jnp.sum(x).astype(jnp.int32), "int32"),
    (lambda x: jnp.sum(x) > 0, "bool"),
    (lambda x: jnp.sum(x ** 2) + 1j, "complex64"),
])
def test_log_density_must_return_a_real_float(log_density, dtype):
    with pytest.raises(ValueError, match=f"log_density must return a real floating-point scalar.*dtype {dtype}"):
        flowvi.fit(log_density, 2, flow="gaussian", steps=2, key=KEY)


def test_hidden_as_a_string_is_refused():
    with pytest.raises(ValueError, match="hidden must be a positive integer or a non-empty sequence of them, got '64'"):
        flowvi.fit(_g, 2, flow="maf", hidden="64", steps=2, key=KEY)


@pytest.mark.parametrize(("kw", "message"), [
    ({"learning_rate": "0.01"}, "learning_rate must be a positive number, got '0.01'"),
    ({"learning_rate": True}, "learning_rate must be a positive number, got True"),
    ({"init_spread": "1"}, "init_spread must be a non-negative number"),
])
def test_numbers_given_as_strings_or_bools_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        flowvi.fit(_g, 2, flow="gaussian", steps=2, key=KEY, **kw)
