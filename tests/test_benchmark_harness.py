"""Pieces of the benchmark harness that need no fitting: timing protocol, targets, tables."""

import math

import numpy as np
import pytest

from benchmarks import report, throughput
from benchmarks.runners import common
from benchmarks.runners.common import measure, timed_fit
from benchmarks.targets import get_target, is_target


class FakeClock:
    """Stands in for time.perf_counter: time moves only when a fake fit says so."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for the timing protocol, and a record of the cache clears (one per cold fit)."""
    fake = FakeClock()
    fake.clears = 0

    def clear_caches():
        fake.clears += 1

    monkeypatch.setattr(common, "time", fake)
    monkeypatch.setattr(common.jax, "clear_caches", clear_caches)
    return fake


def fake_fit(clock, fixed_s, per_step_s, first_call_extra_s=0.0, jitter_s=0.0):
    """A 'fit' whose wall time is exactly fixed + steps * per_step (+ extra on the first call).

    Every other call after the first also takes `jitter_s` longer: the protocol's best-of-two
    warm fits must see through it.
    """
    calls = []

    def fit(n):
        extra = first_call_extra_s if not calls else (jitter_s if len(calls) % 2 else 0.0)
        clock.now += fixed_s + n * per_step_s + extra
        calls.append(n)
        return {"n": n}

    return fit, calls


def test_measure_grows_m_until_resolved_and_cancels_the_fixed_cost(clock):
    # K = 50: T_K = 0.1 s. M = 100 adds 0.05 s < min_extra_s = 0.1, so M grows 4-fold to 400 (+0.35 s).
    fit, calls = fake_fit(clock, fixed_s=0.05, per_step_s=1e-3, first_call_extra_s=0.2, jitter_s=0.03)
    state, t = measure(fit, steps=100, min_extra_s=0.1, timing_steps=50)
    assert state == {"n": 100}  # the cold fit's state, full length
    assert calls == [100, 50, 50, 100, 100, 400, 400]  # cold N, then each warm length twice
    assert clock.clears == 1  # only the cold fit starts from empty caches
    assert t["rate_resolved"] and t["timing_steps"] == [50, 400]
    assert t["fit_s"] == pytest.approx(0.35) and t["warm_fit_s"] == pytest.approx(0.1)  # jitter: best of two
    assert t["s_per_1000"] == pytest.approx(1.0)  # (T_M - T_K) / (M - K): the fixed 0.05 s cancels
    assert t["compile_s"] == pytest.approx(0.25)  # T_cold - N * per_step: first-call extra + fixed cost


def test_measure_stops_at_max_factor_and_flags_an_unresolved_rate(clock):
    # 1e-4 s per step: T_M - T_K reaches only 0.007 s at M = 8 K, under min_extra_s = 0.1.
    fit, calls = fake_fit(clock, fixed_s=0.05, per_step_s=1e-4)
    _, t = measure(fit, steps=10, min_extra_s=0.1, max_factor=8)
    assert calls == [10, 10, 10, 20, 20, 80, 80]
    assert not t["rate_resolved"] and t["timing_steps"] == [10, 80]
    assert t["s_per_1000"] == pytest.approx(0.1)  # still the difference quotient, flagged unresolved


def test_measure_gives_nan_when_the_longer_fit_is_not_slower(clock):
    fit, _ = fake_fit(clock, fixed_s=0.05, per_step_s=0.0)
    _, t = measure(fit, steps=10, min_extra_s=0.1, max_factor=8)
    assert not t["rate_resolved"]
    assert math.isnan(t["s_per_1000"])


def test_fast_timing_divides_one_warm_fit_by_its_steps(clock):
    fit, calls = fake_fit(clock, fixed_s=0.05, per_step_s=1e-3, first_call_extra_s=0.2)
    _, t = measure(fit, steps=100, timing="fast")
    assert calls == [100, 100]
    assert t["s_per_1000"] == pytest.approx(1.5)  # T_N / N: the fixed per-call cost included
    assert t["compile_s"] == pytest.approx(0.2)  # T_cold - T_N


def test_equal_time_mode_runs_budget_over_rate_steps_up_to_the_cap(clock):
    fit, calls = fake_fit(clock, fixed_s=0.05, per_step_s=1e-3, first_call_extra_s=0.2)
    state, t = timed_fit(fit, steps=100, time_budget=0.3)  # full protocol: 1 ms per step -> 300 steps
    assert calls[-1] == 300 and state == {"n": 300}
    assert t["steps"] == 300 and t["calib_steps"] == 100 and not t["capped"]
    assert t["train_s"] == pytest.approx(0.05 + 0.3)
    fit, calls = fake_fit(clock, fixed_s=0.05, per_step_s=1e-3)
    _, t = timed_fit(fit, steps=100, time_budget=10.0, max_factor=20)  # 10000 steps wanted, 2000 allowed
    assert calls[-1] == 2000 and t["steps"] == 2000 and t["capped"]


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
