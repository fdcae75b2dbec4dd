"""Notebooks: a real Jupyter kernel (nbclient + ipykernel) runs ``%%cdl`` cells and shows graphs.

The reference for the displayed counts is torchvision's resnet18 (its
parameter count), not convdsl.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

TINY = """%%cdl net
network tiny(x: f32[N, 3, 16, 16]) {
    return x | conv2d(8, 3, pad=1) as conv | relu | global_avgpool(keepdim=false) | linear(4) as fc
}"""
BAD = """%%cdl bad
network broken(x: f32[N, 3, 8, 8]) {
    return x | conv2d(4, 3) | rleu
}"""


def _outputs(cell) -> tuple[str, dict]:
    """(all stream text, merged display data) of an executed cell."""
    text, data = "", {}
    for out in cell.outputs:
        if out.output_type == "stream":
            text += out.text
        elif out.output_type in ("display_data", "execute_result"):
            data.update(out.data)
        elif out.output_type == "error":
            text += "\n".join(out.traceback)
    return text, data


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in [
        "%load_ext convdsl.notebook",
        TINY,
        "import torch\nprint(type(net).__mro__[1].__name__, tuple(net(torch.zeros(2, 3, 16, 16)).shape))",
        BAD,
        "print('bad' in dir())",
        "import convdsl\ng = convdsl.load_graph('examples/resnet18.cdl')\ng",
    ]]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def test_cdl_cell_binds_a_compiled_module_and_shows_it(executed):
    _, data = _outputs(executed.cells[1])
    html = data["text/html"]
    assert "tiny (compiled: torch)" in html and "<table" in html
    assert "<td style='text-align:left'>conv</td>" in html and "<td style='text-align:left'>fc</td>" in html
    if shutil.which("dot"):
        assert "<svg" in html
    text, _ = _outputs(executed.cells[2])
    assert text.strip() == "Module (2, 4)"  # an nn.Module, called on a batch of 2


def test_cdl_errors_show_the_caret_and_no_traceback(executed):
    text, data = _outputs(executed.cells[3])
    assert "<cell 2>:3:31: name error: unknown name 'rleu'" in text
    assert "    return x | conv2d(4, 3) | rleu" in text and "^^^^" in text
    assert "hint: did you mean 'relu'" in text
    assert "Traceback" not in text and not data
    assert _outputs(executed.cells[4])[0].strip() == "False"  # nothing was bound


def test_a_graph_displays_its_picture_and_table(executed):
    torchvision = pytest.importorskip("torchvision")
    params = sum(p.numel() for p in torchvision.models.resnet18().parameters())
    _, data = _outputs(executed.cells[5])
    html = data["text/html"]
    assert f"{params:,} params" in html  # 11,689,512, as torchvision counts them
    assert "<table" in html and "layer4.1.conv2" in html and "[1, 512, 7, 7]" in html
    if shutil.which("dot"):
        assert data["image/svg+xml"].lstrip().startswith("<svg") and "<svg" in html
