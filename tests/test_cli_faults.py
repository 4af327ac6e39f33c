"""The command line under faults: an unusable --out, outputs already there, failed writes, a
diverged fit, no netCDF engine; and it prints and saves the same diagnostics."""

import contextlib
import dataclasses
import io
import os
import pathlib
import re
import subprocess
import sys

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.figure
import numpy as np
import pytest

import flowvi
from flowvi.cli import main
from flowvi.cli.main import OUTPUTS

ROOT = pathlib.Path(__file__).resolve().parent.parent
BANANA = str(ROOT / "models" / "banana.py")
TINY = ["--flow", "gaussian", "--steps", "20", "--runs", "2", "--draws", "200", "--no-progress"]


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def no_fit(monkeypatch):
    """Fail the test if the command gets as far as fitting."""
    def fit(*args, **kwargs):
        raise AssertionError("the fit ran: the bad --out should have been found before it")
    monkeypatch.setattr(flowvi, "fit", fit)


def _one_line(rc, err, *expected):
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err


# --- item 3: --out is checked before the fit ---------------------------------------------------

def test_out_that_is_a_file(tmp_path, no_fit):
    (tmp_path / "taken").write_text("a file")
    rc, _, err = _run(["fit", BANANA, "--out", str(tmp_path / "taken"), *TINY])
    _one_line(rc, err, "--out", "is a file, not a folder")


def test_out_under_a_file(tmp_path, no_fit):
    (tmp_path / "taken").write_text("a file")
    rc, _, err = _run(["fit", BANANA, "--out", str(tmp_path / "taken" / "run"), *TINY])
    _one_line(rc, err, "--out", "cannot be created", "Not a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a read-only folder")
def test_out_that_is_read_only(tmp_path, no_fit):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        rc, _, err = _run(["fit", BANANA, "--out", str(folder), *TINY])
    finally:
        folder.chmod(0o755)
    _one_line(rc, err, "--out", "is not writable", "Permission denied")


# --- item 12: posterior.nc being a folder is a one-line error -----------------------------------

def test_an_output_that_is_a_folder(tmp_path, no_fit):
    (tmp_path / "posterior.nc").mkdir()
    rc, _, err = _run(["fit", BANANA, "--out", str(tmp_path), *TINY])
    _one_line(rc, err, "holds posterior.nc as a folder, where flowvi writes a file")


# --- item 3 (outputs already there) and "Also" (print and save the same diagnostics) -------------

@pytest.fixture(scope="module")
def refit(tmp_path_factory):
    """One real fit into a folder that already holds the three outputs."""
    out = tmp_path_factory.mktemp("refit")
    for name in OUTPUTS:
        (out / name).write_bytes(b"from an earlier fit")
    rc, stdout, stderr = _run(["fit", BANANA, "--out", str(out), *TINY])
    return out, rc, stdout, stderr


def test_existing_outputs_are_replaced_and_it_says_so_before_fitting(refit):
    out, rc, stdout, stderr = refit
    assert rc == 0, stderr
    said = f"flowvi: {out} already holds posterior.nc, report.png, flow.flowvi: they will be replaced"
    assert said in stdout
    assert stdout.index(said) < stdout.index("\nfit: ")
    for name in OUTPUTS:
        assert (out / name).read_bytes() != b"from an earlier fit"
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)  # no temporary files left


def test_help_and_readme_say_that_outputs_are_replaced(capsys):
    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "outputs already in it are replaced" in text and "130 interrupted" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "already in `--out` are replaced" in readme and "130" in readme


def test_printed_and_saved_diagnostics_are_the_same(refit):
    out, rc, stdout, _ = refit
    attrs = az.from_netcdf(out / "posterior.nc").posterior.attrs
    printed_k = re.search(r"Pareto k-hat\s+(\S+)", stdout).group(1)
    assert float(printed_k) == pytest.approx(attrs["k_hat"], abs=5e-4)  # 3 decimals, more near a threshold
    printed_elbo = re.search(r"ELBO\s+(\S+) ±", stdout).group(1)
    assert printed_elbo == f"{attrs['elbo']:.4f}"
    verdict = re.search(r"verdict: (.*?)\n\n", stdout, re.S).group(1)
    assert " ".join(verdict.split()) == " ".join(attrs["verdict"].split())


def test_to_arviz_records_the_diagnostics_of_its_own_draws():
    post = flowvi.fit(lambda x: -0.5 * jnp.sum((x / jnp.array([1.0, 3.0])) ** 2), 2, flow="gaussian", steps=30,
                      num_runs=2, key=jax.random.key(0))
    key = jax.random.key(7)
    diag = post.diagnose(key, 300)
    for idata in (post.to_arviz(key, 300), post.to_arviz(key, 300, diagnostics=diag)):
        attrs = idata.posterior.attrs
        assert attrs["k_hat"] == diag.k_hat and attrs["elbo"] == diag.elbo and attrs["verdict"] == diag.verdict
    x, _ = post.sample_runs(key, 300)  # the diagnosed draws are the exported ones
    np.testing.assert_array_equal(idata.posterior["x"].values, np.asarray(x, dtype=np.float64))
    with pytest.raises(ValueError, match="diagnostics come from other draws"):
        post.to_arviz(jax.random.key(8), 300, diagnostics=diag)
    with pytest.raises(ValueError, match="diagnostics must be the Diagnostics"):
        post.to_arviz(key, 300, diagnostics={"k_hat": 0.1})


# --- item 2: the CLI's outputs are written atomically -----------------------------------------

def test_failed_writes_keep_the_previous_outputs(tmp_path, monkeypatch):
    for name in OUTPUTS:
        (tmp_path / name).write_bytes(b"from an earlier fit")

    def half_written_file(self, name, *args, **kwargs):  # Figure.savefig, InferenceData.to_netcdf
        pathlib.Path(name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    def half_written_archive(f, **arrays):  # np.savez, as Posterior.save calls it
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    idata_type = type(az.from_dict(posterior={"a": np.zeros((1, 2))}))
    monkeypatch.setattr(idata_type, "to_netcdf", half_written_file)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written_file)
    monkeypatch.setattr(np, "savez", half_written_archive)
    rc, stdout, stderr = _run(["fit", BANANA, "--out", str(tmp_path), *TINY])
    assert rc == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 3, stderr
    for line, name in zip(lines, ["flow.flowvi", "posterior.nc", "report.png"], strict=True):
        assert line.startswith(f"flowvi fit: {tmp_path / name} was not written: ") and "No space left" in line
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == b"from an earlier fit"
    assert sorted(os.listdir(tmp_path)) == sorted(OUTPUTS)
    assert "wrote" not in stdout


# --- item 12: the report of a diverged fit -----------------------------------------------------

def _diverging(monkeypatch, loc):
    """Make the CLI's fit return a posterior whose Gaussian sits at `loc` (NaN or 1e29): a diverged fit."""
    real_fit = flowvi.fit

    def fit(target, **kwargs):
        post = real_fit(target, **{**kwargs, "steps": 5, "progress": False, "init": "standard"})
        shape = post.params["affine"]["loc"].shape
        params = {"affine": {"loc": jnp.full(shape, loc, jnp.float32), "raw_scale": jnp.zeros(shape)}}
        return dataclasses.replace(post, params=params, losses=np.full(post.losses.shape, np.nan))
    monkeypatch.setattr(flowvi, "fit", fit)


DIM3 = "import jax.numpy as jnp\ndim = 3\n\ndef log_density(x):\n    return -0.5 * jnp.sum(x ** 2)\n"


@pytest.mark.parametrize("model", ["banana", "dim3"])
def test_report_of_a_fit_with_nan_draws(model, tmp_path, monkeypatch):
    path = BANANA
    if model == "dim3":
        path = tmp_path / "dim3.py"
        path.write_text(DIM3)
    _diverging(monkeypatch, np.nan)
    rc, stdout, stderr = _run(["fit", str(path), "--out", str(tmp_path / "out"), *TINY])
    assert rc == 1
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert "flow.flowvi was not written: cannot save this fit" in lines[0]
    assert "diagnostics failed, so" in lines[1] and "posterior.nc was not written" in lines[1]
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path / "out")) == ["report.png"]
    assert f"wrote {tmp_path / 'out' / 'report.png'}\n" in stdout


def test_report_of_a_fit_with_huge_draws(tmp_path, monkeypatch):
    _diverging(monkeypatch, 1e29)
    rc, _, stderr = _run(["fit", BANANA, "--out", str(tmp_path), *TINY])
    assert "Traceback" not in stderr
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "flow.flowvi").exists()
    assert rc in (0, 1) and all(line.startswith("flowvi") for line in stderr.strip().splitlines())
    assert "encountered" not in stderr and "All-NaN" not in stderr  # numpy's NaN notes are not shown


# --- item 13: no netCDF engine is found before fitting ----------------------------------------

def test_missing_netcdf_engine_is_said_before_fitting(tmp_path):
    code = ("import sys; sys.modules['h5netcdf'] = None; sys.modules['netCDF4'] = None\n"
            "from flowvi.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", code, "fit", BANANA, "--out", str(tmp_path), *TINY],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "flowvi fit: error: writing ArviZ data to netCDF (posterior.nc) needs the h5netcdf package (with h5py) "
        "or netCDF4, and neither imports here: install h5netcdf (pip install h5netcdf)."]
    assert "\nfit: " not in result.stdout and not os.listdir(tmp_path)
