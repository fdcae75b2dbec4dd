from pathlib import Path

from convdsl.ir.opdocs import render_markdown
from convdsl.ir.ops import OPS

DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def test_docs_ops_md_is_generated_from_the_op_table():
    assert DOC.read_text() == render_markdown(), "docs/ops.md is stale: run `convdsl ops --markdown > docs/ops.md`"


def test_every_op_is_documented():
    text = render_markdown()
    for name, op in OPS.items():
        assert f"### `{name}`" in text
        assert op.doc, f"{name} has no doc"
        assert op.example, f"{name} has no example"
