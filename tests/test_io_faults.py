"""Save and load under faults: a write that fails halfway, damaged files, and the wrong target."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowvi
from flowvi import io


def g(x):
    return -0.5 * jnp.sum(x ** 2)


@pytest.fixture(scope="module")
def fitted():
    return flowvi.fit(g, 2, flow="gaussian", steps=40, key=jax.random.key(0), names=["a", "b"])


def _rewrite(path, change_meta=None, change_arrays=None):
    """Rewrite a saved fit with its metadata or arrays changed (a damaged or hand-made file)."""
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(arrays["meta"].tobytes())
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# --- item 2: a save that fails halfway leaves the previous file -------------------------------

def test_failed_save_keeps_the_previous_file(fitted, tmp_path, monkeypatch):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)
    before = path.read_bytes()
    expected = np.asarray(fitted.sample(jax.random.key(3), 5))

    def half_written(f, **arrays):  # a disk that fills up after a few bytes
        f.write(b"PK\x03\x04 partial archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half_written)
    newer = dataclasses.replace(fitted, stop_reasons=["something else"])
    with pytest.raises(OSError, match="No space left"):
        newer.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    np.testing.assert_array_equal(flowvi.load(path, g).sample(jax.random.key(3), 5), expected)
    assert os.listdir(tmp_path) == ["fit.flowvi"]  # the temporary file is gone


def test_save_onto_a_folder_is_refused_and_the_folder_kept(fitted, tmp_path):
    (tmp_path / "fit.flowvi").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        fitted.save(tmp_path / "fit.flowvi")
    assert (tmp_path / "fit.flowvi").is_dir() and os.listdir(tmp_path) == ["fit.flowvi"]


def test_save_keeps_the_mode_of_the_file_it_replaces(fitted, tmp_path):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(path).st_mode & 0o777) == 0o666 & ~umask  # like open(path, "w"), not mkstemp's 0o600
    os.chmod(path, 0o640)
    fitted.save(path)
    assert (os.stat(path).st_mode & 0o777) == 0o640


# --- item 15: damaged files get a clear error, not a KeyError or silent garbage ----------------

@pytest.mark.parametrize("what, name", [("field", f) for f in ("stop_reasons", "num_leaves", "fit_seconds",
                                                               "settings", "flow")]
                         + [("array", a) for a in ("losses", "steps_run", "param_00000")])
def test_missing_metadata_field_or_array_is_named(fitted, tmp_path, what, name):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)
    if what == "field":
        _rewrite(path, change_meta=lambda meta: meta.pop(name))
    else:
        _rewrite(path, change_arrays=lambda arrays: arrays.pop(name))
    with pytest.raises(ValueError, match=f"damaged: the {what} '{name}' is missing"):
        flowvi.load(path)


def test_integer_parameters_are_refused(fitted, tmp_path):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)
    _rewrite(path, change_arrays=lambda a: a.update(param_00000=a["param_00000"].astype(np.int8)))
    with pytest.raises(ValueError, match="dtype int8"):
        flowvi.load(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_parameters_are_refused(fitted, tmp_path, bad):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)

    def poison(arrays):
        arrays["param_00001"] = arrays["param_00001"].copy()
        arrays["param_00001"].flat[0] = bad
    _rewrite(path, change_arrays=poison)
    with pytest.raises(ValueError, match="1 of its parameter values .* NaN or infinite"):
        flowvi.load(path)


def test_save_refuses_non_finite_parameters(fitted, tmp_path):
    diverged = dataclasses.replace(fitted, params=jax.tree.map(lambda a: a * jnp.nan, fitted.params))
    n = sum(int(np.size(a)) for a in jax.tree.leaves(fitted.params))  # every one of them NaN
    with pytest.raises(ValueError, match=f"cannot save this fit: {n} of its {n} parameter values are NaN"):
        diverged.save(tmp_path / "fit.flowvi")
    assert not os.listdir(tmp_path)


def test_float64_parameters_load_as_the_flows_dtype(fitted, tmp_path):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)
    _rewrite(path, change_arrays=lambda a: a.update(param_00000=a["param_00000"].astype(np.float64)))
    loaded = flowvi.load(path, g)
    assert {leaf.dtype for leaf in jax.tree.leaves(loaded.params)} == {jnp.dtype("float32")}


# --- item 15: the target's fingerprint ---------------------------------------------------------

def test_same_target_loads_without_warning(fitted, tmp_path):
    fitted.save(tmp_path / "fit.flowvi")
    flowvi.load(tmp_path / "fit.flowvi", g)  # filterwarnings=error: any warning fails
    # An unnormalised density is the same target whatever its constant.
    flowvi.load(tmp_path / "fit.flowvi", lambda x: g(x) - 3.7)
    flowvi.load(tmp_path / "fit.flowvi", flowvi.Target(g, 2, names=["a", "b"]))


def test_other_target_of_the_same_dim_warns(fitted, tmp_path):
    fitted.save(tmp_path / "fit.flowvi")
    with pytest.warns(UserWarning, match="not the one this fit was made for: its log density at 4 points"):
        flowvi.load(tmp_path / "fit.flowvi", lambda x: -0.5 * jnp.sum((x - 1.0) ** 2))
    with pytest.warns(UserWarning, match=r"its names are \['x\[0\]', 'x\[1\]'\] where the fit's were \['a', 'b'\]"):
        flowvi.load(tmp_path / "fit.flowvi", flowvi.Target(g, 2))


def test_fingerprint_is_the_targets_log_density_at_the_fits_draws(fitted, tmp_path):
    fitted.save(tmp_path / "fit.flowvi")
    with np.load(tmp_path / "fit.flowvi") as z:
        x, log_p = z["fingerprint_x"], z["fingerprint_log_p"]
    assert x.shape == (io.FINGERPRINT_POINTS, 2)
    np.testing.assert_allclose(log_p, -0.5 * np.sum(x.astype(np.float64) ** 2, axis=1), rtol=1e-6)
    meta = json.loads(np.load(tmp_path / "fit.flowvi")["meta"].tobytes())
    assert meta["names"] == ["a", "b"] and meta["flow"]["dim"] == 2


def test_file_without_fingerprint_loads_without_warning(fitted, tmp_path):
    path = tmp_path / "fit.flowvi"
    fitted.save(path)

    def drop(arrays):
        arrays.pop("fingerprint_x")
        arrays.pop("fingerprint_log_p")
    _rewrite(path, change_arrays=drop)  # as written by flowvi before fingerprints
    flowvi.load(path, lambda x: -0.5 * jnp.sum((x - 1.0) ** 2))


def _rewrite_version(path, version):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    meta["flowvi_version"] = version
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("linear", [True, False])
def test_coupling_linear_layers_from_before_0_3_are_refused(tmp_path, linear):
    # 0.3.0 rescaled the LU layers' off-diagonal by 1/sqrt(dim): same shapes, another map.
    flow = flowvi.flows.make_flow("affine_coupling", 3, layers=1, hidden=(4,), linear=linear)
    post = flowvi.fit(lambda x: -0.5 * jnp.sum(x ** 2), dim=3, flow=flow, steps=2, key=jax.random.key(0))
    path = tmp_path / "old.flowvi"
    post.save(path)
    _rewrite_version(path, "0.2.0")
    if linear:
        with pytest.raises(ValueError, match="written by flowvi 0.2.0.*parameterised differently"):
            flowvi.load(path)
    else:
        np.testing.assert_array_equal(flowvi.load(path).sample(jax.random.key(1), 3), post.sample(jax.random.key(1), 3))
