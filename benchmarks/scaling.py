"""Scaling of `flowvi.fit`: over devices (``mesh=``) and over data size (``subsample=``).

Two tables, each measured in one process so the ratios compare like with like:

1. **Devices.** Seconds per step of the same fit on a mesh of 1, 2, 4 and 8
   devices (the first k of ``jax.devices()``), and the achieved fraction of
   linear scaling ``(t_1 / t_k) / k``. Workloads: ``batch`` (one run, the Monte
   Carlo batch split over the devices) and ``runs`` (8 runs, split over them).
   Without accelerators the devices are simulated CPU devices
   (``--xla_force_host_platform_device_count=8``, set here before JAX starts);
   they share the machine's cores, so their scaling is bounded by the core count.
2. **Data.** Seconds per step of a Bayesian logistic regression with N rows as
   N grows from 10^4 to 10^7, with the full-data likelihood and with
   ``subsample=B``. The subsampled step costs O(B) whatever N is.

Seconds per step come from a second, identical fit (compilation cached), as
``Posterior.fit_seconds / steps``. Run: ``python -m benchmarks.scaling``
(``--quick`` for a smoke run; ``--json PATH`` to save the numbers).
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import flowvi  # noqa: E402

OPTIMIZER = optax.adam(1e-3)  # one object, so that the warm-up and timed fits share their compilation


def seconds_per_step(target, steps: int, **kw) -> float:
    """Warm-up fit (compiles), then the same fit again: its wall time per step (one compiled chunk)."""
    kw = dict(steps=steps, chunk_size=steps, optimizer=OPTIMIZER, key=jax.random.key(0), **kw)
    flowvi.fit(target, **kw)
    return flowvi.fit(target, **kw).fit_seconds / steps


def funnel_like(dim: int):
    """A correlated, curved target in ``dim`` dimensions (cheap; the flow dominates the cost)."""
    def log_density(x):
        return -0.5 * (x[0] ** 2 / 4.0 + jnp.sum((x[1:] - 0.5 * x[:-1] ** 2) ** 2))
    return flowvi.Target(log_density, dim)


def device_scaling(device_counts, dim: int, steps: int, hidden: int) -> list[dict]:
    target = funnel_like(dim)
    flow = dict(flow="spline_coupling", layers=2, hidden=(hidden, hidden))
    workloads = {"batch": dict(num_samples=4096, num_runs=1), "runs": dict(num_samples=512, num_runs=8)}
    rows = []
    for name, work in workloads.items():
        t = seconds_per_step(target, steps, **flow, **work)
        rows.append({"workload": name, "devices": "1 (no mesh)", "seconds_per_step": t, "speedup": float("nan"),
                     "fraction_of_linear": float("nan")})
        print(f"  {name:5s} no mesh:   {t * 1e3:8.2f} ms/step", flush=True)
        base = None
        for k in device_counts:
            mesh = Mesh(np.array(jax.devices()[:k]), ("batch",))
            t = seconds_per_step(target, steps, mesh=mesh, **flow, **work)
            base = t if base is None else base
            rows.append({"workload": name, "devices": k, "seconds_per_step": t,
                         "speedup": base / t, "fraction_of_linear": base / t / k})
            print(f"  {name:5s} devices={k}: {t * 1e3:8.2f} ms/step", flush=True)
    return rows


def logistic_target(n: int, features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.empty((n, features), np.float32)
    for start in range(0, n, 1_000_000):  # in float32 chunks: no float64 copy of 10^7 rows
        stop = min(n, start + 1_000_000)
        X[start:stop] = rng.standard_normal((stop - start, features), dtype=np.float32)
    w = np.linspace(-1.0, 1.0, features, dtype=np.float32)
    y = (rng.random(n, dtype=np.float32) < 1.0 / (1.0 + np.exp(-(X @ w)))).astype(np.float32)

    def log_likelihood(x, row):
        Xi, yi = row
        logit = Xi @ x
        return yi * logit - jnp.logaddexp(0.0, logit)

    return flowvi.Target(log_prior=lambda x: -0.5 * jnp.sum(x ** 2), log_likelihood=log_likelihood,
                         data=(X, y), dim=features)


def data_scaling(sizes, features: int, batch: int, steps: int) -> list[dict]:
    rows = []
    for n in sizes:
        target = logistic_target(n, features)
        common = dict(flow="gaussian", num_samples=8)
        full_steps = max(2, min(steps, int(steps * 1e5 / n)))  # a few steps suffice once a step is slow
        t_full = seconds_per_step(target, full_steps, subsample=None, **common)
        t_sub = seconds_per_step(target, steps, subsample=batch, **common)
        rows.append({"N": n, "full_seconds_per_step": t_full, "subsample_seconds_per_step": t_sub,
                     "full_over_subsample": t_full / t_sub})
        print(f"  N={n:>10,}: full {t_full * 1e3:9.2f} ms/step, subsample={batch} "
              f"{t_sub * 1e3:7.2f} ms/step", flush=True)
        del target
    return rows


def device_table(rows) -> str:
    lines = ["| workload | devices | ms / step | speed-up | fraction of linear |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['workload']} | {r['devices']} | {r['seconds_per_step'] * 1e3:.2f} | {r['speedup']:.2f} | "
              f"{r['fraction_of_linear']:.2f} |".replace("nan", "-") for r in rows]
    return "\n".join(lines)


def data_table(rows, batch: int) -> str:
    lines = [f"| N | full data, ms / step | subsample={batch}, ms / step | full / subsample |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['N']:,} | {r['full_seconds_per_step'] * 1e3:.2f} | "
              f"{r['subsample_seconds_per_step'] * 1e3:.2f} | {r['full_over_subsample']:.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--features", type=int, default=20, help="logistic regression features")
    parser.add_argument("--subsample", type=int, default=1024, help="minibatch size B")
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args(argv)

    counts = [k for k in (1, 2, 4, 8) if k <= jax.device_count()]
    sizes = [10 ** 4, 10 ** 5] if args.quick else [10 ** 4, 10 ** 5, 10 ** 6, 10 ** 7]
    steps = 10 if args.quick else 30
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, "
          f"{os.cpu_count()} CPU cores", flush=True)
    start = time.perf_counter()
    print("Devices:", flush=True)
    devices = device_scaling(counts, dim=8, steps=steps, hidden=8 if args.quick else 32)
    print("Data:", flush=True)
    data = data_scaling(sizes, args.features, args.subsample, steps)
    print(f"\n{device_table(devices)}\n\n{data_table(data, args.subsample)}\n")
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"devices": devices, "data": data, "cpu_count": os.cpu_count(),
                       "platform": jax.devices()[0].platform}, f, indent=1)


if __name__ == "__main__":
    main()
