"""Every plot renders to a PNG (Agg) and its axes carry the expected artists."""

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import banana_log_density  # noqa: E402
from matplotlib.collections import PathCollection, QuadMesh  # noqa: E402

import flowvi  # noqa: E402
from flowvi import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def post():
    return flowvi.fit(banana_log_density, dim=2, flow="gaussian", covariance="full", steps=300, num_runs=2,
                      key=jax.random.key(0))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _assert_png(fig, path):
    fig.savefig(path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_losses(post, tmp_path):
    ax = plots.losses(post)
    assert isinstance(ax, plt.Axes)
    lines = ax.get_lines()
    assert len(lines) == 4  # per run: the raw trace and its moving average
    for line in lines:
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 301))
    np.testing.assert_allclose(lines[0].get_ydata(), post.losses[0])
    assert ax.get_ylabel() == "negative ELBO"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run 0", "run 1"]
    _assert_png(ax.figure, tmp_path / "losses.png")


def test_density(post, tmp_path):
    fig = plots.density(post, jax.random.key(1), grid=60)
    axes = fig.get_axes()
    assert len(axes) == 2
    meshes = [[c for c in ax.collections if isinstance(c, QuadMesh)] for ax in axes]
    assert [len(m) for m in meshes] == [1, 1]
    q, p = (np.asarray(m[0].get_array()).reshape(60, 60) for m in meshes)
    assert np.isfinite(q).all() and np.isfinite(p).all()
    x0, x1 = axes[0].get_xlim(), axes[0].get_ylim()
    cell = (x0[1] - x0[0]) * (x1[1] - x1[0]) / 60 ** 2
    # The grid covers the flow's 0.5%-99.5% quantiles with padding: nearly all of q's mass;
    # the target's density is normalised on the grid (cells are centred on grid points).
    assert 0.95 < q.sum() * cell < 1.05
    np.testing.assert_allclose(p.sum() * cell, 1.0, rtol=0.05)
    assert "target" in axes[1].get_title()
    _assert_png(fig, tmp_path / "density.png")


def test_transformation(post, tmp_path):
    fig = plots.transformation(post, jax.random.key(2), num_points=500, run=1)
    axes = fig.get_axes()
    assert len(axes) == 2
    points = [[c for c in ax.collections if isinstance(c, PathCollection)] for ax in axes]
    assert [len(p) for p in points] == [1, 1]
    base, moved = points[0][0], points[1][0]
    assert base.get_offsets().shape == moved.get_offsets().shape == (500, 2)
    # The same colour marks a base point and its image.
    np.testing.assert_array_equal(base.get_facecolors(), moved.get_facecolors())
    u = np.asarray(base.get_offsets())
    x = np.asarray(post.run(1).distribution.bijector.forward(u))
    np.testing.assert_allclose(moved.get_offsets(), x, rtol=1e-5, atol=1e-5)
    assert "run 1" in axes[1].get_title()
    _assert_png(fig, tmp_path / "transformation.png")


def test_weights(post, tmp_path):
    ax = plots.weights(post, jax.random.key(3), num_draws=1000)
    assert isinstance(ax, plt.Axes)
    scatter = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatter) == 1 and len(scatter[0].get_offsets()) == 400  # the largest fifth of 2000
    assert len(ax.get_lines()) == 1
    assert ax.get_xscale() == "log"
    assert "k-hat" in ax.get_title()
    k_hat = float(ax.get_title().split("=")[1].split()[0])
    d = post.diagnose(jax.random.key(3), num_draws=1000, iw_k=None)
    np.testing.assert_allclose(k_hat, d.k_hat, atol=0.005)  # same draws, same key
    _assert_png(ax.figure, tmp_path / "weights.png")


def test_plots_draw_on_given_axes(post):
    fig, axes = plt.subplots(2, 2)
    assert plots.losses(post, ax=axes[0, 0]) is axes[0, 0]
    # Sizes as in the tests above, so their compilations are reused.
    assert plots.weights(post, num_draws=1000, ax=axes[0, 1]) is axes[0, 1]
    assert plots.density(post, axes=axes[1], grid=60) is fig
    with pytest.raises(ValueError, match="2 matplotlib Axes"):
        plots.transformation(post, axes=[axes[0, 0]])


def _untrained(dim):
    flow = flowvi.flows.make_flow("gaussian", dim)
    return flowvi.Posterior(flow=flow, params=jax.vmap(flow.init)(jax.random.split(jax.random.key(0), 1)),
                            target=None, losses=np.zeros(0), stop_reasons=["untrained"],
                            steps_run=np.zeros(1, int), skipped_steps=np.zeros(1, int), fit_seconds=0.0,
                            settings={})


def test_dimension_errors():
    with pytest.raises(ValueError, match="2-D target"):
        plots.density(_untrained(3))
    with pytest.raises(ValueError, match="dim >= 2"):
        plots.transformation(_untrained(1))
