"""Every notebook in notebooks/ runs top to bottom without error (as the README promises), is
committed with its outputs, and the repo names no file that a clone of it would not have."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_PER_CELL = 300   # seconds; each notebook is meant to run in well under a minute


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_without_error(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # run inside notebooks/ (their first cell puts the repo root on sys.path) without touching the file
    NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path):
    # readers open the notebooks on the web without running them: every code cell must have run,
    # in order, and none may have stopped with an error
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in cells]
    assert None not in counts, f"{path.name}: cells {[i for i, n in enumerate(counts) if n is None]} have not run"
    assert counts == sorted(counts), f"{path.name}: cells ran out of order: {counts}"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"], f"{path.name} holds an error"


# the project's design notes live outside the repo; a clone has none of them, so nothing may point there
OUTSIDE = ("shared" + "/", "MIAR" + ".md", "DATA" + ".md", "STYLE" + ".md")
# the project's own folders only (a local venv or runs/ folder may hold anything)
TEXT_FILES = [p for folder in (ROOT, ROOT / ".ci", ROOT / "notebooks", ROOT / "tests") for p in folder.iterdir()
              if p.is_file() and p.suffix in {".py", ".md", ".ipynb", ".txt", ""}] + list((ROOT / "results").rglob("*.json"))


def test_repo_names_no_file_outside_itself():
    found = [f"{p.relative_to(ROOT)}: {name}" for p in TEXT_FILES
             for name in OUTSIDE if name in p.read_text(errors="ignore")]
    assert not found, f"these point to files a clone does not have: {found}"
