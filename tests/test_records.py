"""The run record a notebook leaves behind: read back by gflnb.book.records, invisible to readers."""
import json

import jupytext
import nbformat
import pytest

from gflnb.book import ROOT, execute, records
from gflnb.chapters.nbtools import RECORD_MIME

TINY = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
steps = 3

# %%
import math
import torch
from gflnb.chapters import nbtools as nb
print("trained", steps, "steps")

# %% tags=["remove-cell"]
nb.record(chapter="tiny", steps=steps, loss=torch.tensor(0.25), nan=math.nan, curve=[1.0, math.inf],
          nested={"ap": (0.5, float("nan"))}, path=__import__("pathlib").Path("runs/x"))
'''


def _texts(nb) -> list[str]:
    """Every piece of text a reader could see in ``nb``'s outputs (streams, plain text, HTML, markdown)."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out += [v if isinstance(v, str) else json.dumps(v) for k, v in o.get("data", {}).items()
                    if k.startswith("text/")]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    (tmp / "tiny.py").write_text(TINY)
    out = tmp / "tiny.ipynb"
    execute(tmp / "tiny.py", out, dict(steps=7), timeout=300)
    return out


def test_the_record_comes_back_through_records(tiny):
    assert records(tiny) == [dict(chapter="tiny", steps=7, loss=0.25, nan=None, curve=[1.0, None],
                                  nested={"ap": [0.5, None]}, path="runs/x")]


def test_the_record_prints_nothing(tiny):
    nb = nbformat.read(str(tiny), as_version=4)
    assert any("trained 7 steps" in t for t in _texts(nb))  # the reader would see printed text
    assert not [t for t in _texts(nb) if "GFLNB_RECORD" in t or "chapter" in t]
    cell = next(c for c in nb.cells if "nb.record(" in c.source)
    assert "remove-cell" in cell.metadata.get("tags", [])
    # one display output whose only mimetype has no renderer: JupyterLab shows an empty output
    assert [(o.output_type, sorted(o.data)) for o in cell.outputs] == [("display_data", [RECORD_MIME])]


def test_old_printed_records_still_read(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("nb.record(a=1)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text='noise\nGFLNB_RECORD {"a": 1, "b": [2.5]}\n')])])
    nbformat.write(nb, str(tmp_path / "old.ipynb"))
    assert records(tmp_path / "old.ipynb") == [{"a": 1, "b": [2.5]}]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0*.py")), ids=lambda p: p.stem)
def test_every_chapter_hides_its_record_cell(path):
    cells = [c for c in jupytext.read(path).cells if "nb.record(" in c.source]
    assert len(cells) == 1, f"{path.name}: {len(cells)} record cells"
    assert "remove-cell" in cells[0].metadata.get("tags", []), f"{path.name}: the record cell would be published"


def test_an_experiment_run_has_no_cell_time_limit_unless_asked(monkeypatch, tmp_path):
    # sweep points run `python -m gflnb.book run ...`; their budget is in epochs, so a busy machine
    # must not turn a slow point into a failed one
    import gflnb.book as book
    seen = []
    monkeypatch.setattr(book, "execute", lambda src, out, params, timeout=3600: seen.append(timeout))
    monkeypatch.setattr(book, "records", lambda out: [])
    book.main(["run", "a.py", str(tmp_path / "a.ipynb"), "-p", "seed", "0"])
    book.main(["run", "a.py", str(tmp_path / "a.ipynb"), "--timeout", "60"])
    assert seen == [None, 60]
