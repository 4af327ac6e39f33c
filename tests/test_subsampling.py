"""The default ``subsample="auto"`` rule of `flowvi.fit` (`flowvi.subsampling`)."""

import jax
import numpy as np
import pytest
from test_data_target import plain_logistic

import flowvi
from flowvi import subsampling
from flowvi.subsampling import DEFAULT_BATCH, FLOP_BUDGET, MIN_ROWS, choose_subsample, full_step_flops


def test_the_rule_subsamples_only_large_costly_data_with_control_variates():
    costly = lambda: 10 * FLOP_BUDGET  # noqa: E731
    assert choose_subsample(True, MIN_ROWS, costly, True, "")[0] == DEFAULT_BATCH
    assert choose_subsample(True, MIN_ROWS - 1, costly, True, "")[0] is None
    assert choose_subsample(True, MIN_ROWS, lambda: 0.5 * FLOP_BUDGET, True, "")[0] is None
    batch, why = choose_subsample(True, MIN_ROWS, costly, False, "control_variates=False")
    assert batch is None and why.endswith("because control_variates=False")
    assert choose_subsample(False, 10 * MIN_ROWS, costly, True, "")[0] is None  # a NumPyro model
    assert MIN_ROWS >= 20 * DEFAULT_BATCH  # a subsampled step is far cheaper than a full one


def test_full_step_flops_counts_every_draw_and_row():
    # Logistic regression, d = 3: XLA counts a fixed number of flops per row for the value and gradient,
    # so the count is linear in N (and in the draws) with no constant worth the name.
    counts = {}
    for n in (1000, 2000, 20_000):
        spec = plain_logistic(n).data_spec()
        counts[n] = full_step_flops(spec.log_density, spec.data, 3, 64)
    per_row = counts[2000] / 2000 / 64
    assert 10 < per_row < 200
    assert counts[2000] == pytest.approx(2 * counts[1000], rel=0.01)
    assert counts[20_000] == pytest.approx(20 * counts[1000], rel=0.01)


@pytest.fixture
def small_thresholds(monkeypatch):
    """The rule at a scale a unit test can afford: B = 50 from N = 1000 rows and 1e5 flops."""
    monkeypatch.setattr(subsampling, "DEFAULT_BATCH", 50)
    monkeypatch.setattr(subsampling, "MIN_ROWS", 1000)
    monkeypatch.setattr(subsampling, "FLOP_BUDGET", 1e5)


def test_fit_applies_the_rule_by_default_and_records_it(small_thresholds):
    target = plain_logistic(2000)
    kw = dict(flow="gaussian", steps=20, key=jax.random.key(0), progress=False)
    post = flowvi.fit(target, **kw)
    assert post.settings["subsample"] == 50
    assert post.settings["subsample_rule"].startswith("auto (N=2,000 >= 1,000")
    assert post.settings["control_variates"].startswith("second-order")
    # Explicit full data, whatever the rule says.
    full = flowvi.fit(target, subsample=None, **kw)
    for given in (full, flowvi.fit(target, subsample=2000, **kw)):
        assert given.settings["subsample"] in (None, 2000)
        assert given.settings["subsample_rule"] == "full data (given)"
        assert given.settings["control_variates"] == "off (no subsampling)"
    # The subsampled steps are not the full data's: different loss traces from the same key.
    assert np.any(post.losses != full.losses)
    # Without control variates the rule keeps the full data (plain subsampling is too noisy at large N).
    off = flowvi.fit(target, control_variates=False, **kw)
    assert off.settings["subsample"] is None and "because control_variates=False" in off.settings["subsample_rule"]
    np.testing.assert_array_equal(off.losses, full.losses)


def test_small_data_keeps_the_full_data_by_default():
    kw = dict(flow="gaussian", steps=5, init="standard", key=jax.random.key(0), progress=False)
    post = flowvi.fit(plain_logistic(200), **kw)
    assert post.settings["subsample"] is None
    assert post.settings["subsample_rule"] == f"auto (N=200 is below {MIN_ROWS:,}): full data"
    plain = flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, **kw)
    assert plain.settings["subsample_rule"] == "auto: full data (the target has no data axis)"


def test_bad_subsample_values_are_named():
    kw = dict(flow="gaussian", steps=2, key=jax.random.key(0))
    for bad in ("always", "full"):
        with pytest.raises(ValueError, match=r"subsample must be 'auto', None \(the full data\) or a positive int"):
            flowvi.fit(plain_logistic(50), subsample=bad, **kw)
    with pytest.raises(ValueError, match=r"subsample"):
        flowvi.fit(plain_logistic(50), subsample=0, **kw)
