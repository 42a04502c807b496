"""examples/arxiv_study.ipynb executed top to bottom in a Jupyter kernel of this Python, on a small
budget set in its parameters cell, everything written under tmp (slow)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "arxiv_study.ipynb"


def test_the_example_notebook_runs_every_cell(tmp_path, monkeypatch):
    from ipykernel.kernelspec import install

    install(kernel_name="arxivcls-test", prefix=str(tmp_path / "jupyter"))  # a kernel spec for sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed stripped
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    # one epoch per trial: nothing for the scheduler to stop early (see test_api's tiny_study)
    small = {"tune.study": "nb", "tune.num_samples": 2, "train.epochs": 1, "data.max_per_class": 15, "data.max_length": 64,
             "tune.tracking": [], "tune.results_dir": str(tmp_path / "reports"), "tune.models_dir": str(tmp_path / "models"),
             "train.storage_path": str(tmp_path / "runs"), "train.output_dir": str(tmp_path / "models" / "train"),
             "data.cache_dir": str(tmp_path / "cache"), "baseline.num_trials": 4}
    parameters.source += (f"\nOVERRIDES.update({small!r})"
                          # other Ray instances may run on a test machine: the notebook's ray.init() then finds this one
                          "\nfrom arxivcls.raycluster import start_local_ray; start_local_ray(log_to_driver=False)")

    try:
        NotebookClient(notebook, kernel_name="arxivcls-test", timeout=900,
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        nbformat.write(notebook, tmp_path / "executed.ipynb")  # to read when a cell failed

    text = lambda cell: "".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")) for out in cell.outputs)
    study_cell = next(cell for cell in notebook.cells if "arxivcls.tune(" in cell.source)
    assert "ray: the running Ray runtime; dashboard http://" in text(study_cell)  # not cleared by Tune's notebook reporter
    assert "arxivcls: trial 2/2" in text(study_cell) and "<IPython.core.display.HTML object>" not in text(study_cell)
    assert "RayTrainWorker" not in text(study_cell)  # the workers' output stays in Ray's logs
    confusion_cell = next(cell for cell in notebook.cells if "confusion_matrix_tuned" in cell.source)
    assert any("image/png" in out.get("data", {}) for out in confusion_cell.outputs)  # the Figure shows inline
    assert (tmp_path / "reports" / "nb" / "report.md").is_file()
