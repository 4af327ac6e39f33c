"""Compile time of `flowvi.fit` against flow depth: does a deep flow compile like a shallow one?

For each layered family this times a cold fit (after ``jax.clear_caches()``) and
a warm fit of the same few steps; their difference is the first call's extra
cost: tracing and compiling the training chunk. Depths 2, 4 and 16 by default,
and the ratio of the deepest to the shallowest (the goal: at most 2). Layers run
under `lax.scan` with up to `flowvi.bijectors.layer_scan.UNROLL` layers per
iteration, so depth beyond that adds loop iterations, not code.

Run: ``python -m benchmarks.compile_time [--dim 10] [--layers 2,4,16]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import flowvi

FAMILIES = {  # family -> hyperparameters besides `layers`
    "affine_coupling": {"hidden": (32, 32)},
    "spline_coupling": {"hidden": (32, 32)},
    "iaf": {"hidden": (32, 32)},
    "maf": {"hidden": (32, 32)},
    "bnaf": {"block_size": (8, 8)},
}


def funnel(x):
    """Neal's funnel in ``dim`` dimensions: x: (dim,) -> scalar."""
    v, rest = x[0], x[1:]
    return -0.5 * v**2 / 9.0 - 0.5 * jnp.sum(rest**2) * jnp.exp(-v) - 0.5 * rest.size * v


def compile_seconds(family: str, dim: int, layers: int, steps: int = 20) -> float:
    """Cold minus warm wall time of the same short fit: tracing plus compilation."""
    kw = dict(dim=dim, flow=family, layers=layers, steps=steps, num_samples=64, key=jax.random.key(0),
              progress=False, **FAMILIES[family])
    times = []
    for cold in (True, False):
        if cold:
            jax.clear_caches()
        start = time.perf_counter()
        jax.block_until_ready(flowvi.fit(funnel, **kw).params)
        times.append(time.perf_counter() - start)
    return times[0] - times[1]


def main(argv=None) -> list[dict]:
    """Print a markdown table (family x depth) of compile seconds; return the rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--layers", default="2,4,16", help="comma-separated depths")
    p.add_argument("--families", default=",".join(FAMILIES))
    a = p.parse_args(argv)
    depths = [int(x) for x in a.layers.split(",")]
    print(f"backend: {jax.default_backend()}, dim={a.dim}; compile seconds of flowvi.fit")
    print("| family | " + " | ".join(f"{d} layers" for d in depths) + f" | {depths[-1]} / {depths[0]} |")
    print("|---|" + "---:|" * (len(depths) + 1))
    rows = []
    for family in a.families.split(","):
        secs = [compile_seconds(family, a.dim, d) for d in depths]
        rows.append({"family": family, "layers": depths, "compile_s": secs})
        print(f"| {family} | " + " | ".join(f"{s:.2f}" for s in secs) + f" | {secs[-1] / secs[0]:.2f} |",
              flush=True)
    return rows


if __name__ == "__main__":
    main()
