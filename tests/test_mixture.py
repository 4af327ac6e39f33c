"""Mixtures of runs (Posterior.mixture), stacking weights, the mode-coverage check and runs that explore.

Most posteriors here are built from known Gaussians (flow="gaussian" with its location and scale set
through flows.with_final_affine), so the right weights, overlaps and mode counts are known exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomize
from scipy.special import logsumexp

import flowvi
from flowvi import mixture
from flowvi.flows import make_flow, with_final_affine

A, B = np.array([-6.0, 0.0]), np.array([6.0, 0.0])
SHARE_A, SHARE_B = 0.3, 0.7
LOG_Z = 1.5  # the target is unnormalised by this constant


def two_modes(x):
    """0.3 N(A, I) + 0.7 N(B, I) in 2-D, times exp(LOG_Z)."""
    la = -0.5 * jnp.sum((x - A) ** 2) + jnp.log(SHARE_A)
    lb = -0.5 * jnp.sum((x - B) ** 2) + jnp.log(SHARE_B)
    return jnp.logaddexp(la, lb) - jnp.log(2 * jnp.pi) + LOG_Z


def gaussian_runs(locs, scales, target=two_modes, flow=None, params=None):
    """A Posterior whose run r is N(locs[r], diag(scales[r])^2) (or `flow` with `params`)."""
    locs = np.asarray(locs, np.float32)
    runs, dim = locs.shape
    flow = make_flow("gaussian", dim) if flow is None else flow
    if params is None:
        params = jax.vmap(flow.init)(jax.random.split(jax.random.key(0), runs))
    params = with_final_affine(params, loc=jnp.asarray(locs),
                               scale=jnp.broadcast_to(jnp.asarray(scales, jnp.float32), (runs, dim)))
    return flowvi.Posterior(flow=flow, params=params, target=None if target is None else flowvi.Target(target, dim),
                            losses=np.zeros((runs, 1)), stop_reasons=["completed all steps"] * runs,
                            steps_run=np.ones(runs, int), skipped_steps=np.zeros(runs, int), fit_seconds=0.0,
                            settings={})


def test_mixture_density_integrates_to_one_on_a_grid():
    # Three spline-coupling runs pulled away from the identity, weighted 0.2 / 0.3 / 0.5.
    flow = make_flow("spline_coupling", 2, layers=2, hidden=(8,))
    params = randomize(jax.vmap(flow.init)(jax.random.split(jax.random.key(1), 3)), jax.random.key(2), 0.1)
    post = gaussian_runs([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], [[1.0, 0.7], [0.8, 1.2], [1.1, 0.9]],
                         target=None, flow=flow, params=params)
    mixed = post.mixture(jax.random.key(0), weights=[2.0, 3.0, 5.0])
    np.testing.assert_allclose(mixed.mixture_weights, [0.2, 0.3, 0.5])
    h = 0.05
    axis = np.arange(-10.0, 10.0, h) + h / 2
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    log_q = np.asarray(mixed.log_prob(jnp.asarray(grid)), np.float64)
    # Midpoint rule, not Monte Carlo: the error is O(h^2) times the density's curvature (the splines
    # are only C^1 at their knots); each run alone integrates to 1 within 3e-4 on this grid, and its
    # draws stay within |x| < 7 (20,000 of them), so the mass beyond |x| = 10 is negligible.
    assert abs(np.exp(log_q).sum() * h * h - 1.0) < 1e-3
    # ... and the density is exactly logsumexp_r(log w_r + log q_r(x)), with each run's own density.
    own = np.stack([np.asarray(post.run(r).log_prob(jnp.asarray(grid[:500])), np.float64) for r in range(3)])
    expected = logsumexp(own + np.log([[0.2], [0.3], [0.5]]), axis=0)
    np.testing.assert_allclose(log_q[:500], expected, rtol=0, atol=1e-4)


def test_stacking_gives_a_mode_shared_by_two_runs_its_true_share():
    post = gaussian_runs([A, A, B], np.ones((3, 2)))
    mixed = post.mixture(jax.random.key(0), num_draws=1000)
    w = mixed.mixture_weights
    # Each run is exactly one of the target's components, so the importance weights are constant on each
    # mode up to the overlap of the modes (Bhattacharyya coefficient exp(-12^2 / 8) ~ 2e-8): no Monte
    # Carlo error beyond that. Equal weights would give mode B 1/3, double counting mode A.
    assert abs(w[2] - SHARE_B) < 1e-4 and abs(w[0] + w[1] - SHARE_A) < 1e-4, w
    assert abs(w[0] - w[1]) < 1e-6, w  # the two identical runs share their mode's weight
    assert mixed.settings["mixture"]["num_draws"] == 1000 and mixed.is_mixture and not post.is_mixture


def test_stacking_weighs_a_too_narrow_run_by_the_mass_of_its_mode():
    # Run 2 is narrower than mode B (sd 0.8 for 1), run 0 wider than mode A: the weights are then an
    # importance-sampling estimate with Monte Carlo error. Its standard error, from the same draws
    # (self-normalised importance sampling, delta method), sets the tolerance.
    post = gaussian_runs([A, A, B], [[1.25, 1.25], [1.0, 1.0], [0.8, 0.8]])
    key, n = jax.random.key(3), 4000
    mixed = post.mixture(key, num_draws=n)
    x, log_p, cross = post.cross_draws(key, n)
    log_w = mixture.mixture_log_weights(log_p, cross).reshape(-1)
    weights = np.exp(log_w - logsumexp(log_w))
    in_b = (x[..., 0] > 0).reshape(-1)
    share = weights @ in_b
    se = np.sqrt(np.sum(weights ** 2 * (in_b - share) ** 2))  # about 0.006
    assert abs(mixed.mixture_weights[2] - SHARE_B) < 4 * se + 1e-3, (mixed.mixture_weights, se)
    assert abs(mixed.mixture_weights[2] - share) < 0.01  # the EM fixed point is the estimated mass of B


def test_diagnose_counts_the_modes_and_the_mixture_covers_them():
    post = gaussian_runs([A, A, B], np.ones((3, 2)))
    d = post.diagnose(jax.random.key(1), num_draws=1000, iw_k=None)
    assert d.num_modes == 2 and d.modes.groups == ((0, 1), (2,)), d.modes
    # Exact components: the stacking estimate is exact up to the modes' overlap (see above).
    np.testing.assert_allclose(d.modes.mode_weights, [SHARE_A, SHARE_B], atol=1e-3)
    assert d.verdict.startswith("unreliable") and "runs disagree" in d.verdict
    assert "found 2 separated modes" in d.verdict and "post.mixture(key)" in d.verdict
    mixed = post.mixture(jax.random.key(2))
    dm = mixed.diagnose(jax.random.key(1), num_draws=1000, iw_k=None)
    assert dm.mixture_of == 3 and dm.num_draws == 3000 and dm.rhat is None
    assert dm.verdict.startswith("good"), dm.verdict
    assert "found 2 separated modes; the mixture covers them" in dm.verdict.lower()
    # The mixture is the target up to its constant: log Z is exact, to float32 rounding.
    assert abs(dm.log_z - LOG_Z) < 1e-4 and abs(dm.elbo - LOG_Z) < 1e-4
    text = str(dm)
    assert "mixture of 3 runs" in text and "separated modes found" in text and "mode weight" in text


def test_a_mixture_too_narrow_for_its_modes_says_the_runs_disagree():
    # Runs of sd 0.3 on modes of sd 1: the weights' tail index is 1 - 0.3^2 = 0.91 per coordinate
    # (see flowvi.diagnostics.RAW_BIAS_TOL), so k-hat is far above 0.7 for 3000 draws.
    mixed = gaussian_runs([A, B], np.full((2, 2), 0.3)).mixture(jax.random.key(0))
    dm = mixed.diagnose(jax.random.key(1), num_draws=1500, iw_k=None)
    assert dm.num_modes == 2 and dm.k_hat > 0.7, dm.k_hat
    assert dm.verdict.startswith("unreliable") and "runs disagree" in dm.verdict
    assert "the mixture covers them" not in dm.verdict


def test_overlap_is_the_bhattacharyya_coefficient_and_joins_runs_closer_than_two_sd():
    n = 4000
    for delta, same in ((1.5, True), (2.5, False)):
        post = gaussian_runs([[0.0, 0.0], [delta, 0.0]], np.ones((2, 2)), target=None)
        x, _ = post.sample_runs(jax.random.key(4), n)
        cross = np.stack([np.asarray(post.log_prob_runs(x[r]), np.float64) for r in range(2)], axis=1)
        b = mixture.overlap(cross)
        # Exact for two unit Gaussians: exp(-delta^2 / 8). Each direction's estimate has sd at most
        # 1 / sqrt(n) = 0.016; 4 of them.
        assert abs(b[0, 1] - np.exp(-delta ** 2 / 8)) < 4 / np.sqrt(n), (delta, b)
        assert (mixture.modes(b) == ((0, 1),)) == same


def test_mixture_sample_is_stratified_and_carries_the_mixture_density():
    mixed = gaussian_runs([A, A, B], np.ones((3, 2))).mixture(jax.random.key(0), weights=[0.15, 0.15, 0.7])
    x, log_q, run = mixed.sample_mixture(jax.random.key(5), 1000)
    counts = np.bincount(run, minlength=3)
    assert np.all(np.abs(counts - 1000 * mixed.run_weights) <= 1), counts
    np.testing.assert_allclose(np.asarray(log_q), np.asarray(mixed.log_prob(x)), rtol=0, atol=1e-6)
    # Each draw comes from its run: run 2's draws lie on mode B.
    assert np.all(np.asarray(x)[run == 2, 0] > 0)
    same = mixed.sample(jax.random.key(5), 1000)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    np.testing.assert_array_equal(mixture.stratified_counts(0.999, np.array([0.5, 0.0, 0.5]), 3), [2, 0, 1])


def test_save_and_load_keep_the_weights(tmp_path):
    post = gaussian_runs([A, A, B], np.ones((3, 2)))
    mixed = post.mixture(jax.random.key(0), num_draws=500)
    path = tmp_path / "mixture.flowvi"
    mixed.save(path)
    back = flowvi.load(path, two_modes)
    np.testing.assert_array_equal(back.mixture_weights, mixed.mixture_weights)
    x = mixed.sample(jax.random.key(7), 200)
    np.testing.assert_array_equal(np.asarray(back.sample(jax.random.key(7), 200)), np.asarray(x))
    np.testing.assert_allclose(np.asarray(back.log_prob(x)), np.asarray(mixed.log_prob(x)), rtol=0, atol=0)
    assert back.settings["mixture"]["weights"] == pytest.approx(list(mixed.mixture_weights))
    # A file without weights (independent runs, as every file before mixtures) loads with equal ones.
    post.save(tmp_path / "runs.flowvi")
    plain = flowvi.load(tmp_path / "runs.flowvi", two_modes)
    assert plain.mixture_weights is None and not plain.is_mixture
    np.testing.assert_allclose(plain.run_weights, [1 / 3] * 3)
    with np.load(tmp_path / "runs.flowvi") as archive:
        assert "mixture_weights" not in archive.files
    # Damaged weights are refused, naming them.
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["mixture_weights"] = np.array([0.5, 0.5, 0.5])
    with open(tmp_path / "bad.flowvi", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="mixture weights"):
        flowvi.load(tmp_path / "bad.flowvi", two_modes)


def test_mixture_to_arviz_is_one_chain_with_the_run_of_each_draw():
    mixed = gaussian_runs([A, A, B], np.ones((3, 2))).mixture(jax.random.key(0))
    idata = mixed.to_arviz(jax.random.key(1), num_draws=100)
    assert idata.posterior["x"].shape == (1, 300, 2)
    run = np.asarray(idata.sample_stats["run"]).reshape(-1)
    assert abs(np.mean(run == 2) - mixed.run_weights[2]) <= 1 / 300  # stratified: within one draw
    assert idata.attrs["mixture_weights"] == pytest.approx(list(mixed.mixture_weights))
    assert "separated modes" in idata.attrs["verdict"]


def test_bad_input_names_the_argument():
    one = gaussian_runs([A], np.ones((1, 2)))
    with pytest.raises(ValueError, match="num_runs=1"):
        one.mixture(jax.random.key(0))
    post = gaussian_runs([A, B], np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        post.mixture(jax.random.key(0), weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="weights must be finite, non-negative"):
        post.mixture(jax.random.key(0), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="num_draws"):
        post.mixture(jax.random.key(0), num_draws=0)
    with pytest.raises(TypeError, match="key"):
        post.mixture(0)
    no_target = gaussian_runs([A, B], np.ones((2, 2)), target=None)
    with pytest.raises(ValueError, match="weights="):
        no_target.mixture(jax.random.key(0))
    assert no_target.mixture(jax.random.key(0), weights=[1, 1]).run_weights.tolist() == [0.5, 0.5]


def far_modes(x):
    """Equal mixture of N((-2, 0), 0.5^2 I) and N((8, 0), 0.5^2 I), normalised: an L-BFGS climb from the origin
    (or from anywhere left of x0 = 3) ends on the first."""
    la = -0.5 * jnp.sum((x - np.array([-2.0, 0.0])) ** 2) / 0.25
    lb = -0.5 * jnp.sum((x - np.array([8.0, 0.0])) ** 2) / 0.25
    return jnp.logaddexp(la, lb) - jnp.log(2 * 2 * jnp.pi * 0.25)


def test_runs_that_explore_find_both_modes_and_stack_to_their_shares():
    # The warm start of run 0 climbs from the origin to (-2, 0). The other runs climb from a wide draw
    # (init_spread=4 around the origin) and take the climbs that ended farthest apart, so one starts at
    # (8, 0). (Before, every run started at run 0's Gaussian moved by 4 of its sds, 2 units: all on (-2, 0).)
    post = flowvi.fit(far_modes, dim=2, flow="gaussian", steps=100, num_runs=3, init_spread=4.0,
                      key=jax.random.key(0), progress=False)
    ends = np.asarray(post.sample_runs(jax.random.key(1), 200)[0].mean(axis=1))
    assert np.any(ends[:, 0] > 6) and np.any(ends[:, 0] < 0), ends
    assert len(post.settings["warm_start"]["runs"]) == 3
    mixed = post.mixture(jax.random.key(3), num_draws=1000)
    right = sum(mixed.mixture_weights[r] for r in range(3) if ends[r, 0] > 6)
    # Self-normalised importance sampling from 3 x 1000 draws of near-exact components: s.e. about
    # sqrt(0.25 / ESS) < 0.015 for an ESS above 1000; 0.06 is 4 of them.
    assert abs(right - 0.5) < 0.06, mixed.mixture_weights
