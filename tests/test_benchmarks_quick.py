"""Smoke test of the benchmark harness (flowvi methods only, main venv, quick mode)."""

import json
import math
import sys

from benchmarks import run
from benchmarks.runners import METHODS


def test_quick_benchmark_flowvi_only(tmp_path):
    # Two families keep the smoke test cheap; every flowvi method shares the one runner it exercises.
    results = run.main(["--quick", "--methods", "flowvi_gaussian_full,flowvi_iaf", "--targets", "banana2d",
                        "--draws", "4000", "--python", sys.executable, "--out", str(tmp_path)])
    flowvi_methods = ["flowvi_gaussian_full", "flowvi_iaf"]
    assert all(m in METHODS for m in flowvi_methods)
    runs = {r["method"]: r for r in results["runs"]}
    assert sorted(runs) == sorted(flowvi_methods)
    for method, rec in runs.items():
        assert rec["status"] == "ok", (method, rec.get("error"), rec.get("traceback"), rec.get("log"))
        assert rec["num_draws"] == 4000 and rec["n_params"] > 0 and rec["steps"] == 100
        m = rec["metrics"]
        for key in ("elbo", "kl", "is_log_z_error", "khat", "ess_frac", "mean_err_sd", "log_sd_ratio"):
            assert math.isfinite(m[key]), (method, key, m[key])
        assert m["kl"] > -0.05  # KL >= 0 up to Monte Carlo error
        assert 0 < m["ess_frac"] <= 1
        assert rec["compile_s"] >= 0 and rec["s_per_1000"] >= 0 and rec["peak_mb"] > 0
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md"]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(saved["runs"]) == len(flowvi_methods)
    table = next(tmp_path.glob("*.md")).read_text()
    assert "## banana2d" in table and all(m in table for m in flowvi_methods)
