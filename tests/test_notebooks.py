"""Execute every notebook in ``notebooks/`` top to bottom in a fresh kernel (issue #8).

Each notebook runs with its ``QUICK = True`` sizes in a new ``python3`` kernel (the interpreter running
pytest: jupyter_client starts ipykernel specs with ``sys.executable``), with the notebooks folder as its
working directory, offline, one BLAS thread. A cell error fails the test. The notebooks are stored
without outputs; the executed copies stay in memory and nothing is written into the repository. Each
notebook's wall time is printed (``pytest -s``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # one cell; the four notebooks together take about 5 minutes on 2 idle CPU cores

_wall: dict[str, float] = {}


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        TQDM_DISABLE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def test_notebooks_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_concept_vectors.ipynb",
        "02_heads.ipynb",
        "03_probes_and_ches.ipynb",
        "04_audit_unlearning.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs are stored"
        sources = "\n".join(c.source for c in code)
        assert "QUICK = True" in sources and "torch.manual_seed(0)" in sources, path.name
        assert ".show()" not in sources, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working directory
    )
    t0 = time.perf_counter()
    try:
        client.execute(env=_kernel_env())
    except CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell raised\n{e}")
    finally:
        wall = time.perf_counter() - t0
        _wall[path.name] = wall
        print(f"\n{path.name}: {wall:.1f} s wall", flush=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs), (
        f"{path.name}: no plotly figure was displayed"
    )
    if len(_wall) == len(NOTEBOOKS):
        print(f"all notebooks: {sum(_wall.values()):.1f} s wall", flush=True)
