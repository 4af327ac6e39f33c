"""The README's multimodal figure: the 8-mode ring, one flow against a mixture of runs.

``python -m benchmarks.ring_figure [--out benchmarks/figures/ring.png] [--seed 0]``

Four panels on one colour scale, densities on a grid over ``[-6.5, 6.5]^2``:
``flowvi.fit`` with its defaults (one run, 2000 steps); the same with
``tempering=0.1``; 8 runs of 250 steps (the same total) made one posterior by
``post.mixture``; and the target, normalised on the grid. Each panel's title
gives the KL(q || p) from 20,000 draws (`benchmarks.multimodal.score`).
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.multimodal import MIXTURE, TEMPERING, get_target, score

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 2000
GRID = 200
LIMIT = 6.5


def fits(seed: int) -> dict:
    """The three fitted posteriors of the figure, by panel title."""
    import flowvi

    t = get_target("ring")
    key = jax.random.key(seed)
    single = flowvi.fit(t.log_density, dim=2, steps=STEPS, key=key, progress=False)
    tempered = flowvi.fit(t.log_density, dim=2, steps=STEPS, key=key, progress=False,
                          tempering=TEMPERING["ring"])
    runs = MIXTURE["ring"]["num_runs"]
    several = flowvi.fit(t.log_density, dim=2, steps=STEPS // runs, num_runs=runs,
                         init_spread=MIXTURE["ring"]["init_spread"], key=key, progress=False)
    return {"one run (defaults)": single, f"one run, tempering={TEMPERING['ring']}": tempered,
            f"{runs} runs x {STEPS // runs} steps, post.mixture": several.mixture(jax.random.fold_in(key, 1))}


def draw(posts: dict, path: pathlib.Path, seed: int) -> None:
    """Write the figure to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = get_target("ring")
    g = np.linspace(-LIMIT, LIMIT, GRID)
    mesh = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
    cell = (g[1] - g[0]) ** 2
    log_p = np.asarray(jax.vmap(t.log_density)(mesh), np.float64)
    p = np.exp(log_p - log_p.max())
    panels = {}
    for i, (title, post) in enumerate(posts.items()):
        x, log_q = post.sample_and_log_prob(jax.random.key(1000 + seed + i), 20_000)
        kl = score(t, np.asarray(x), np.asarray(log_q))["kl"]
        panels[f"{title}\nKL {kl:.3f}"] = np.exp(np.asarray(post.log_prob(mesh), np.float64))
    panels["target"] = p / (p.sum() * cell)
    vmax = max(v.max() for v in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2), constrained_layout=True)
    for ax, (title, v) in zip(axes, panels.items(), strict=True):
        ax.pcolormesh(g, g, v.reshape(GRID, GRID), shading="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize="medium")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main(argv=None) -> None:
    """Fit and draw."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ring_figure", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "figures" / "ring.png"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    draw(fits(args.seed), pathlib.Path(args.out), args.seed)


if __name__ == "__main__":
    main()
