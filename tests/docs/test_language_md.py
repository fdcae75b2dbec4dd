"""docs/language.md: every CDL example parses, every whole program elaborates, and the examples
of the forms issue 14 added (slicing, item assignment, def application, labels on def calls,
symbolic reshape) do what the text beside them says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from convdsl.ir.types import TensorType
from convdsl.lang.elaborate import elaborate
from convdsl.lang.format import MAX_WIDTH, format_source
from convdsl.lang.parser import parse

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```cdl\n(.*?)```", (ROOT / "docs" / "language.md").read_text(), re.S)
PROGRAMS = [b for b in BLOCKS if "network " in b]
AS_FILE = str(ROOT / "examples" / "doc.cdl")  # imports resolve against examples/


def _program(marker: str) -> str:
    (text,) = [b for b in PROGRAMS if marker in b]
    return text


@pytest.mark.parametrize("text", BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_every_example_parses(text):
    parse(text if "network " in text else "network doc() {\n" + text + "    return 0\n}\n")


@pytest.mark.parametrize("text", PROGRAMS, ids=lambda b: b.splitlines()[0][:40])
def test_every_whole_program_elaborates(text):
    assert elaborate(text, AS_FILE).outputs


def test_slices_and_item_assignment_as_documented():
    g = elaborate(_program("DEPTHS[:-1]"), AS_FILE)
    # d[::2] of [2, 4, 6] is [2, 6]: two convs of 8 * k channels
    assert [s.shape[0] for k, s in sorted(g.params.specs.items()) if k.endswith("weight")] == [16, 48]


def test_def_application_as_documented():
    g = elaborate(_program("bn2(y, 0.3)"), AS_FILE)
    assert sorted(n.attrs["momentum"] for n in g.nodes() if n.op == "batchnorm") == [0.1, 0.3]


def test_labels_on_def_calls_as_documented():
    g = elaborate(_program('bn() as "layers.1"'), AS_FILE)
    assert {"layers.1.weight", "layers.1.running_mean", "stem.0.weight", "stem.1.weight"} <= set(g.params.specs)


def test_param_labels_as_documented():
    g = elaborate(_program("network vit_keys"), AS_FILE)
    assert set(g.params.specs) == {"conv_proj.weight", "conv_proj.bias", "class_token", "encoder.pos_embedding",
                                   "encoder.ln.weight", "encoder.ln.bias"}


def test_symbolic_reshape_as_documented():
    g = elaborate(_program("network windows"), AS_FILE)
    conv = next(n for n in g.nodes() if n.op == "conv2d")
    assert conv.types[0] == TensorType(("16*N", 16, 4, 4))
    assert g.output_types()[0] == TensorType(("N", 64, 8, 8))


def test_symbolic_sizes_as_values_as_documented():
    g = elaborate(_program("network window_net"), AS_FILE)
    assert g.node("win.attn").types[0] == TensorType(("4*N", 16, 16))
    assert g.output_types()[0] == TensorType(("N", 1024))


def test_canonical_layout_example_is_canonical():
    """Issue 14 item 7: the layout section shows what `convdsl fmt` prints, within the width."""
    text = _program("network layout")
    assert format_source(text) == text
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH
    assert '           "height and width must be multiples of 8"' in text  # an assert breaks after its ','


def test_attention_projection_names_as_documented():
    """Issue 14 item 3: mhsa(qkv=, proj=) names the projections as the comment beside it says."""
    g = elaborate(_program("network vit_attention"), AS_FILE)
    assert g.params.specs["blocks.0.attn.qkv.weight"].shape == (576, 192)
    assert {"blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"} <= set(g.params.specs)
