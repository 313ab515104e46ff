"""Every notebook in notebooks/ runs top to bottom without error (as the README promises)."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TIMEOUT_PER_CELL = 300   # seconds; each notebook is meant to run in well under a minute


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_without_error(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # run inside notebooks/ (their first cell puts the repo root on sys.path) without touching the file
    NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
