"""Pieces of the benchmark harness that need no fitting: timing protocol, targets, tables."""

import math
import time

import numpy as np
import pytest

from benchmarks import report, throughput
from benchmarks.runners.common import measure
from benchmarks.targets import get_target, is_target


def _fake_fit(fixed_s: float, per_step_s: float, first_call_extra_s: float):
    """A 'fit' whose wall time is known: fixed cost + steps * per-step cost (+ extra on the first call)."""
    calls = []

    def fit(n):
        time.sleep(fixed_s + n * per_step_s + (first_call_extra_s if not calls else 0.0))
        calls.append(n)
        return {"n": n}

    return fit, calls


def test_measure_recovers_the_per_step_cost_and_compile_time():
    fit, calls = _fake_fit(fixed_s=0.05, per_step_s=1e-3, first_call_extra_s=0.2)
    state, t = measure(fit, steps=100, min_extra_s=0.1, timing_steps=50)
    assert state == {"n": 100}  # the cold fit's state, full length
    assert calls[0] == 100 and set(calls[1:]) <= {50, 100, 400, 1600}  # warm fits at K = min(N, timing_steps)
    assert t["rate_resolved"]
    assert t["s_per_1000"] == pytest.approx(1.0, rel=0.25)
    # compile_s = T_cold - N * per_step = first-call extra + fixed per-call cost
    assert t["compile_s"] == pytest.approx(0.25, abs=0.06)


def test_measure_flags_a_rate_it_cannot_resolve():
    fit, _ = _fake_fit(fixed_s=0.05, per_step_s=0.0, first_call_extra_s=0.0)
    _, t = measure(fit, steps=10, min_extra_s=0.1, max_factor=8)
    assert not t["rate_resolved"]
    assert math.isnan(t["s_per_1000"]) or t["s_per_1000"] < 5.0  # only timer jitter is left


def test_gauss_targets_of_any_dimension():
    assert is_target("gauss7d") and is_target("banana2d")
    assert not is_target("gauss0d") and not is_target("gauss") and not is_target("nope")
    t = get_target("gauss7d")
    assert t.dim == 7 and t.reference["sd"].shape == (7,)
    # log Z of the unnormalised Gaussian: 0.5 * (d log 2 pi + log det Sigma); Sigma's eigenvalues
    # are log-spaced over [0.01, 100], whose log-sum is 0 by symmetry.
    assert t.reference["log_z"] == pytest.approx(0.5 * 7 * np.log(2 * np.pi), abs=1e-9)
    with pytest.raises(KeyError, match="gauss<N>d"):
        get_target("gaussian7")


def test_report_draws_per_second_column():
    rec = {"method": "m", "status": "ok", "num_samples": 64, "s_per_1000": 0.5, "steps": 10,
           "metrics": {k: 0.0 for k in ("elbo", "kl", "is_log_z_error", "khat", "ess_frac", "mean_err_sd",
                                        "log_sd_ratio")}}
    row = report.table([rec]).splitlines()[2].split(" | ")
    header = report.table([rec]).splitlines()[0].split(" | ")
    assert row[header.index("k draws/s")] == "128.0"  # 64 draws per 0.5 ms


def test_throughput_table_marks_failures():
    recs = [{"method": "a", "dim": 5, "num_samples": 64, "status": "ok", "s_per_1000": 0.5},
            {"method": "a", "dim": 5, "num_samples": 128, "status": "failed"}]
    lines = throughput.cell_table(recs, [(5, 64), (5, 128), (9, 64)]).splitlines()
    assert lines[0] == "| method | d=5, B=64 | d=5, B=128 | d=9, B=64 |"
    assert lines[2] == "| a | 128.0 | failed |  |"
