"""examples/landscape.ipynb runs top to bottom in a fresh kernel of this interpreter and shows its figures.

nbclient executes it (as nbmake does) inside an ordinary test, so it runs wherever the suite runs: plain
``pytest``, ``pytest -n 2``, or ``pytest tests/test_notebook.py``, without a flag or a path in the Makefile.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "landscape.ipynb"


def _outputs(nb: Any, kind: str) -> list[Any]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if kind in out]


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_notebook_runs_and_shows_figures(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Which interpreter and package the kernel ran: appended here, not stored in the notebook.
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import sys, lightning_landscape\nprint(sys.executable, lightning_landscape.__file__)"
        )
    )
    # The kernel should be this interpreter (jupyter_client puts sys.executable for the spec's "python")
    # importing this checkout, in the notebook's folder as Jupyter would open it.
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    client = nbclient.NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, if a cell fails

    printed = "".join(
        out.get("text", "") for out in _outputs(nb, "text") if out.get("output_type") == "stream"
    )
    assert "barrier" in printed and "lambda_max" in printed
    # The plane, the barrier and the Hessian line are displayed as PNG images via _repr_png_.
    results = [out for out in _outputs(nb, "data") if "image/png" in out["data"]]
    reprs = [out["data"]["text/plain"] for out in results]
    assert len(results) == 3, reprs
    assert [r.split("(")[0] for r in reprs] == ["PlaneResult", "BarrierResult", "LineResult"]
    executable, package = nb.cells[-1].outputs[0]["text"].split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(package).resolve() == ROOT / "lightning_landscape" / "__init__.py"
