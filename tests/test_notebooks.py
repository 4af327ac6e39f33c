"""Every notebook in notebooks/ executes without error (quick settings: FLOWVI_QUICK=1).

The committed notebooks hold the outputs of a full run; here each is run in a
fresh kernel from its own folder, with fewer steps, and the outputs are discarded.
"""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
TIMEOUT_S = 300  # per cell


def test_notebooks_present():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_fitting_to_samples.ipynb",
                                           "03_numpyro_guide.ipynb", "04_diagnostics.ipynb", "05_neutra.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), f"{path.name} is not fully executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{path.name} has no plot"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("FLOWVI_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # Headless, and each figure becomes an image/png output as in a notebook front end (Agg drops them).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None  # only what this run makes counts below
    # A last cell reports, from inside the kernel, whether the notebook took its quick settings.
    nb.cells.append(nbformat.v4.new_code_cell("print('QUICK =', QUICK)"))
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name}: not every cell ran"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{path.name} drew no plot"
    assert [o.get("text") for o in code[-1].outputs] == ["QUICK = True\n"]
