"""`Posterior`: selecting a run, and diagnostics of a fit that has degenerated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowvi


def _posterior(params, target=None, losses=None):
    flow = flowvi.flows.make_flow("gaussian", 2)
    runs = jax.tree.leaves(params)[0].shape[0]
    return flowvi.Posterior(flow=flow, params=params, target=target,
                            losses=np.zeros((runs, 0)) if losses is None else losses,
                            stop_reasons=[f"reason {r}" for r in range(runs)], steps_run=np.arange(runs) + 2,
                            skipped_steps=np.zeros(runs, int), fit_seconds=0.0, settings={})


def _two_runs():
    """Run 0 at loc (0, 0), run 1 at loc (5, -5); run 0 stopped after 2 steps, run 1 after 3 (NaN-padded trace)."""
    flow = flowvi.flows.make_flow("gaussian", 2)
    params = jax.vmap(flow.init)(jax.random.split(jax.random.key(0), 2))
    params = flowvi.flows.with_final_affine(params, loc=jnp.array([[0.0, 0.0], [5.0, -5.0]]))
    return _posterior(params, losses=np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]]))


@pytest.mark.parametrize("i", [0, 1, np.int64(1)])
def test_run_selects_one_run(i):
    post = _two_runs()
    one = post.run(i)
    assert one.num_runs == 1
    np.testing.assert_array_equal(one.losses, [[1.0, 2.0], [3.0, 4.0, 5.0]][int(i)])
    assert one.stop_reasons == [f"reason {int(i)}"] and one.steps_run.tolist() == [int(i) + 2]
    np.testing.assert_array_equal(flowvi.flows.final_affine(one.params)["loc"], [[[0.0, 0.0]], [[5.0, -5.0]]][int(i)])
    # A single run's run(0) is itself.
    np.testing.assert_array_equal(one.run(0).losses, one.losses)


@pytest.mark.parametrize("i", [2, -1, 10])
def test_run_index_out_of_range(i):
    with pytest.raises(IndexError, match=f"run index i={i} is out of range"):
        _two_runs().run(i)


@pytest.mark.parametrize("i", [True, 1.0, "0", None])
def test_run_index_must_be_an_integer(i):
    # run(True) used to index the loss trace with a boolean (pooling every run's losses).
    with pytest.raises(TypeError, match="run index i must be an integer"):
        _two_runs().run(i)


def test_diagnostics_of_a_degenerate_fit_name_the_cause():
    # A NaN scale: the flow's own log density is NaN at its draws, whatever the target says.
    flow = flowvi.flows.make_flow("gaussian", 2)
    params = jax.vmap(flow.init)(jax.random.split(jax.random.key(0), 2))
    params["affine"]["raw_scale"] = params["affine"]["raw_scale"].at[1, 0].set(jnp.nan)
    target = flowvi.Target(lambda x: -0.5 * jnp.sum(x ** 2), dim=2)
    post = _posterior(params, target)
    with pytest.raises(ValueError, match=r"non-finite at 50 of 100 of its own draws; the fit has degenerated"):
        post.diagnose(jax.random.key(1), num_draws=50, iw_k=None)
    # The healthy run alone diagnoses normally: an exact fit of the standard normal, log Z = log 2 pi.
    d = post.run(0).diagnose(jax.random.key(1), num_draws=50, iw_k=None)
    np.testing.assert_allclose(d.log_z, np.log(2 * np.pi), atol=1e-5)
