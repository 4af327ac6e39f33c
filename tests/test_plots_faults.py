"""Plots of diverged fits: NaN or infinite draws, densities, weights and losses are left out and said so.

pytest turns warnings into errors here, so a plot that divides by an empty
array or asks for a legend with nothing in it fails too.
"""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import standard_normal, tiny_gaussian_fit  # noqa: E402
from matplotlib.collections import PathCollection, QuadMesh  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import flowvi  # noqa: E402
from flowvi import plots  # noqa: E402
from flowvi.cli.report import report_figure  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K = jax.random.key(0)


g = standard_normal


@pytest.fixture(scope="module")
def post():
    return tiny_gaussian_fit()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _with_loc(post, loc, dim=2):
    """The posterior with its Gaussian's location set to `loc` (NaN, inf or 1e29: a diverged fit)."""
    params = {"affine": {"loc": jnp.full((1, dim), loc, jnp.float32), "raw_scale": jnp.zeros((1, dim))}}
    return dataclasses.replace(post, params=params, losses=np.full(20, np.nan))


def _texts(fig) -> str:
    return " ".join(t.get_text().replace("\n", " ") for t in fig.findobj(Text))


def _png(fig, tmp_path):
    fig.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("loc", [np.nan, np.inf])
def test_every_plot_of_non_finite_draws_says_so(post, loc, tmp_path):
    bad = _with_loc(post, loc)
    fig = plots.density(bad, K)
    assert "nothing to draw: 2000 of 2000 draws of the flow are NaN or infinite" in _texts(fig)
    assert not fig.findobj(QuadMesh)
    _png(fig, tmp_path)
    fig = plots.transformation(bad, K)
    assert "the flow sends all 2000 points to NaN or infinity" in _texts(fig)
    _png(fig, tmp_path)
    ax = plots.weights(bad, K, num_draws=500)
    assert ax.get_title() == "Pareto k-hat: not available"
    assert "no importance weights to draw: of 500 draws" in _texts(ax.figure)
    _png(ax.figure, tmp_path)
    ax = plots.losses(bad)
    assert "no finite loss to draw: all 20 losses are NaN or infinite" in _texts(ax.figure)
    _png(ax.figure, tmp_path)


def test_density_of_huge_draws_says_so(post, tmp_path):
    # Draws at 1e29 are finite, but the target underflows to -inf there and the range has no width in float32.
    fig = plots.density(_with_loc(post, 1e29), K)
    assert "give no usable plot range" in _texts(fig)
    _png(fig, tmp_path)
    fig = plots.density(_with_loc(post, 1e29), bounds=((1e29, 2e29), (1e29, 2e29)))
    assert "the target's log density is NaN or -inf at every point of the grid" in _texts(fig)
    _png(fig, tmp_path)


def test_target_nan_on_half_the_space(post, tmp_path):
    half = dataclasses.replace(post, target=flowvi.Target(lambda x: jnp.where(x[0] < 0, jnp.nan, g(x)), 2))
    fig = plots.density(half, K, grid=40, bounds=((-1, 1), (-1, 1)))
    assert len(fig.findobj(QuadMesh)) == 2
    assert "800 of 1600 grid values NaN or infinite (blank)" in _texts(fig)  # x0 < 0: 20 of 40 columns
    _png(fig, tmp_path)
    ax = plots.weights(half, K, num_draws=1000)
    nan = int(np.sum(np.asarray(half.sample_runs(K, 1000)[0][0, :, 0]) < 0))  # the same draws
    assert f"of 1000 weights: {nan} NaN or infinite (left out)" in ax.get_title().replace("\n", " ")
    assert 400 < nan < 600
    assert len(ax.collections[0].get_offsets()) == min(1000 - nan, 200)  # the largest finite raw weights
    _png(ax.figure, tmp_path)


def test_target_minus_inf_on_half_the_space_counts_zero_weights(post):
    half = dataclasses.replace(post, target=flowvi.Target(lambda x: jnp.where(x[0] < 0, -jnp.inf, g(x)), 2))
    ax = plots.weights(half, K, num_draws=1000)
    zero = int(np.sum(np.asarray(half.sample_runs(K, 1000)[0][0, :, 0]) < 0))
    assert ax.get_title().endswith(f"of 1000 weights: {zero} zero")
    assert np.all(np.isfinite(ax.collections[0].get_offsets()))


def test_losses_with_some_non_finite_steps(post):
    losses = np.linspace(5.0, 1.0, 20)
    losses[[3, 7]] = np.nan
    ax = plots.losses(dataclasses.replace(post, losses=losses))
    assert "2 of 20 losses NaN or infinite (not drawn)" in _texts(ax.figure)
    steps, values = ax.get_lines()[0].get_data()
    np.testing.assert_array_equal(steps, [s for s in range(1, 21) if s not in (4, 8)])  # at their own steps
    np.testing.assert_array_equal(values, losses[np.isfinite(losses)])


def test_losses_of_a_fit_that_ran_no_steps(post):
    ax = plots.losses(dataclasses.replace(post, losses=np.zeros(0), steps_run=np.array([0])))
    assert "no finite loss to draw: no steps ran" in _texts(ax.figure)


def test_transformation_leaves_out_points_sent_to_infinity(post):
    # A scale of 1e38 sends every base point with |u| > 3.40 (float32's largest finite value / 1e38) to infinity.
    huge = dataclasses.replace(post, params={"affine": {"loc": jnp.zeros((1, 2)),
                                                        "raw_scale": jnp.full((1, 2), 1e38)}})
    fig = plots.transformation(huge, K, num_points=2000)
    u = np.asarray(jax.random.normal(K, (2000, 2)))  # the base points transformation draws with this key
    lost = int(np.sum(np.any(np.abs(u.astype(np.float64)) * 1e38 > np.finfo(np.float32).max, axis=1)))
    assert lost > 0
    assert len(fig.axes[1].findobj(PathCollection)[0].get_offsets()) == 2000 - lost
    assert f"{lost} of 2000 points sent to NaN or infinity (not drawn)" in _texts(fig)


def test_report_figure_of_a_diverged_fit_without_export(tmp_path):
    post3 = flowvi.fit(g, 3, flow="gaussian", steps=20, key=K, init="standard")
    bad = _with_loc(post3, np.nan, dim=3)
    fig = report_figure(bad, None, K, jax.random.key(1), num_draws=200)
    text = _texts(fig)
    assert "no pair plot: 200 of 200 draws are NaN or infinite" in text
    assert "no importance weights to draw" in text and "no finite loss to draw" in text
    _png(fig, tmp_path)


def test_report_figure_pair_plot_of_identical_draws(tmp_path):
    post3 = flowvi.fit(g, 3, flow="gaussian", steps=20, key=K, init="standard")
    fig = report_figure(_with_loc(post3, 1e29, dim=3), None, K, jax.random.key(1), num_draws=200)
    _png(fig, tmp_path)  # one value per column: the histograms get a width instead of failing
