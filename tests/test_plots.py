"""Every plot renders to a PNG (Agg) and its axes carry the expected artists."""

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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


def _trailing_mean(values, window):
    """Mean of the last `window` values up to each step (fewer at the start)."""
    return np.array([values[max(0, i - window + 1):i + 1].mean() for i in range(len(values))])


@pytest.mark.parametrize(("smooth", "window"), [(None, 6), (1, 1), (25, 25)])  # default: 300 steps // 50
def test_losses_smooth_is_the_moving_average_window(post, smooth, window):
    lines = plots.losses(post, smooth=smooth).get_lines()
    for run in range(2):
        raw, averaged = lines[2 * run], lines[2 * run + 1]
        np.testing.assert_allclose(raw.get_ydata(), post.losses[run])
        np.testing.assert_allclose(averaged.get_ydata(), _trailing_mean(post.losses[run], window), rtol=1e-12)
    if window > 1:  # the averaged line really is smoother than the raw trace
        assert np.std(np.diff(lines[1].get_ydata())) < 0.5 * np.std(np.diff(lines[0].get_ydata()))


def test_density_bounds_set_the_grid(post):
    bounds = ((-1.5, 2.0), (-1.0, 3.0))
    fig = plots.density(post, bounds=bounds, grid=60)
    q_mesh, p_mesh = (next(c for c in ax.collections if isinstance(c, QuadMesh)) for ax in fig.get_axes())
    # Cell centres on np.linspace over each bound, so the drawn area is the bounds plus half a cell.
    g0, g1 = np.linspace(*bounds[0], 60), np.linspace(*bounds[1], 60)
    half0, half1 = (g0[1] - g0[0]) / 2, (g1[1] - g1[0]) / 2
    np.testing.assert_allclose(fig.get_axes()[0].get_xlim(), (bounds[0][0] - half0, bounds[0][1] + half0))
    np.testing.assert_allclose(fig.get_axes()[0].get_ylim(), (bounds[1][0] - half1, bounds[1][1] + half1))
    # The flow panel is exp(log q) at those points (row = x1, column = x0).
    mesh = np.stack(np.meshgrid(g0, g1), axis=-1).reshape(-1, 2)
    q = np.exp(np.asarray(post.log_prob(mesh), dtype=np.float64)).reshape(60, 60)
    np.testing.assert_allclose(np.asarray(q_mesh.get_array()).reshape(60, 60), q, rtol=1e-5, atol=1e-8)
    # The target panel is the banana's density normalised on this grid: exp(log p) / (sum * cell).
    log_p = np.array([float(banana_log_density(jnp.asarray(point))) for point in mesh[::97]])
    p = np.asarray(p_mesh.get_array()).reshape(-1)[::97]
    ratio = p / np.exp(log_p)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # proportional to the target's density
    with pytest.raises(ValueError, match="bounds must be"):
        plots.density(post, bounds=(0.0, 1.0))


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
