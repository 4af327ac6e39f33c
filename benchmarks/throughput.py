"""Training throughput at scale: draws per second of each method over dimensions and batch sizes.

Meant for an accelerator (the numbers in the issue's GPU table come from one
H200), but runs anywhere. For every (dim, batch) cell it runs the usual harness
(`benchmarks.run`: one subprocess per method, the same timing protocol) on the
``gauss<dim>d`` target with ``--num-samples batch``, and reports thousands of
training draws per second, ``batch / seconds per step``, for each method, plus
compile seconds and the device's peak memory. Cells run in order until
``--time-limit`` is spent, so a run under a hard wall-clock limit still returns
what it finished; results are saved after every run. ``--in-process`` runs the
methods in this process instead of one subprocess each, which saves each
method's start-up (seconds on a GPU) but gives up the per-run timeout and the
per-method device memory peak.

Run: ``python -m benchmarks.throughput --dims 50,1000 --batches 256,4096``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from benchmarks import run, worker

DEFAULT_METHODS = ("flowvi_spline_coupling,flowvi_iaf,flowvi_iaf_spline,flowvi_bnaf,"
                   "numpyro_iaf,numpyro_bnaf,flowjax_maf_rqs,flowjax_bnaf")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="50,1000", help="comma-separated event sizes")
    p.add_argument("--batches", default="256,4096", help="comma-separated Monte Carlo batch sizes")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated names or globs")
    p.add_argument("--steps", type=int, default=100, help="steps of the cold fit (the rate comes from warm fits)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per (cell, method) run")
    p.add_argument("--time-limit", type=float, default=float("inf"),
                   help="start no new cell after this many seconds")
    p.add_argument("--python", default=None, help="interpreter for the workers")
    p.add_argument("--in-process", action="store_true", help="no subprocess per method (no per-run timeout)")
    p.add_argument("--out", default=str(run.ROOT / "benchmarks" / "results"), help="results folder")
    return p.parse_args(argv)


def cell_table(records: list[dict], cells: list[tuple[int, int]]) -> str:
    """Markdown: one row per method, one column per (dim, batch) cell, k draws/s (failures marked)."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    head = "| method | " + " | ".join(f"d={d}, B={b}" for d, b in cells) + " |"
    lines = [head, "|---|" + "---|" * len(cells)]
    for m in methods:
        row = []
        for d, b in cells:
            r = next((r for r in records if r["method"] == m and r["dim"] == d and r["num_samples"] == b), None)
            if r is None:
                row.append("")
            elif r.get("status") != "ok" or not r.get("s_per_1000"):
                row.append(r.get("status", "?"))
            else:
                row.append(f"{b / r['s_per_1000']:.1f}")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _save(path: pathlib.Path, results: dict, records: list[dict]) -> None:
    results["runs"] += records
    path.write_text(json.dumps(results, indent=1, default=float))


def main(argv=None) -> dict:
    """Run the cells; return ``{"cells", "runs", "meta"}`` (also written to --out)."""
    a = parse_args(argv)
    dims = [int(x) for x in a.dims.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    out_dir = pathlib.Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results = {"meta": vars(a), "cells": [], "runs": []}
    start = time.perf_counter()
    for dim in dims:
        for batch in batches:
            if time.perf_counter() - start > a.time_limit:
                print(f"time limit reached; skipping dim={dim}, batch={batch}", flush=True)
                continue
            argv_cell = ["--targets", f"gauss{dim}d", "--num-samples", str(batch), "--steps", str(a.steps),
                         "--methods", a.methods, "--draws", "2000", "--timeout", str(a.timeout),
                         "--out", str(out_dir / "cells")]
            if a.python:
                argv_cell += ["--python", a.python]
            results["cells"].append([dim, batch])
            if a.in_process:
                args = run.parse_args(argv_cell)
                for method in args.methods:
                    rec = worker.run_spec(run.make_spec(args, f"gauss{dim}d", method))
                    rec.pop("device_peak_mb", None)  # the process-wide peak, not this method's
                    print(f"[dim={dim}, batch={batch}] {method}: {rec['status']} {rec.get('error') or ''}",
                          flush=True)
                    _save(path, results, [{"num_samples": batch, **rec, "dim": dim}])
            else:
                _save(path, results, [{"num_samples": batch, **rec, "dim": dim}
                                      for rec in run.main(argv_cell)["runs"]])
            print(cell_table(results["runs"], [tuple(c) for c in results["cells"]]), flush=True)
    table = cell_table(results["runs"], [tuple(c) for c in results["cells"]])
    path.with_suffix(".md").write_text("# Training throughput, k draws/s (batch / seconds per step)\n\n"
                                       + table + "\n")
    print(f"\nwrote {path} and {path.with_suffix('.md')}", flush=True)
    return results


if __name__ == "__main__":
    main()
