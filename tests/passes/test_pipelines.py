"""The pass table, the named pipelines and ``run_passes``: names resolve (or fail
listing the valid ones), verify runs after each pass, every pipeline keeps the
outputs of every example, and the CLI's --opt / --passes apply them."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from click.testing import CliRunner

from convdsl.api import load_graph
from convdsl.errors import IRError, UsageError
from convdsl.ir.graph import Graph
from convdsl.passes import PASSES, PIPELINES, dce, fold_bn, resolve, run_passes

from .zoo import EXAMPLES, EXAMPLES_DIR, TOL, example, inputs_for, outputs, param_fingerprint, reference, \
    rel_diff, same_graph

FLOAT_PIPELINES = ["O0", "O1", "O2"]  # exact up to float rounding; quantized pipelines are tested with quantization
SMALL = "network net(x: f32[N, 4, 8, 8]) {\n    return x | conv2d(6, 3, pad=1) as conv | batchnorm as bn | dropout\n}\n"


def test_pipeline_table():
    assert PIPELINES["O0"] == []
    assert PIPELINES["O1"] == ["remove_identity", "dce"]
    assert PIPELINES["O2"] == ["fold_bn", "remove_identity", "cse", "const_fold", "dce"]
    assert all(p in PASSES for steps in PIPELINES.values() for p in steps)
    assert set(PASSES).isdisjoint(PIPELINES)


def test_resolve_names_lists_and_functions():
    assert [n for n, _ in resolve("O2")] == PIPELINES["O2"]
    assert resolve("fold_bn, dce") == [("fold_bn", fold_bn), ("dce", dce)]
    assert [n for n, _ in resolve("O1,fold_bn")] == ["remove_identity", "dce", "fold_bn"]
    custom = functools.partial(dce)
    assert resolve(["fold_bn", custom]) == [("fold_bn", fold_bn), ("dce", custom)]
    assert resolve(fold_bn) == [("fold_bn", fold_bn)]
    assert resolve("") == [] and resolve("O0") == []


@pytest.mark.parametrize("spec", ["O3", "fold_bn,dcee", ["fold_bn", "nope"]])
def test_unknown_name_lists_the_valid_ones(spec):
    with pytest.raises(UsageError) as e:
        run_passes(load_graph(SMALL), spec)
    text = e.value.render()
    assert "unknown pass or pipeline" in text
    for name in [*PIPELINES, *PASSES]:
        assert name in text


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(UsageError, match="did you mean 'fold_bn'"):
        resolve("fold_nb")


def test_run_passes_records_and_verifies():
    g = load_graph(SMALL)
    recs: list = []
    out = run_passes(g, "O2", verify_each=True, log=recs)
    assert [n.op for n in out.nodes()] == ["input", "conv2d"]
    assert [r.name for r in recs] == PIPELINES["O2"]
    assert recs[0].nodes == (4, 3) and recs[1].nodes == (3, 2)
    assert len(g) == 4  # the input graph is unchanged


def test_verify_each_names_the_pass_that_broke_the_graph():
    def break_outputs(graph: Graph) -> Graph:
        g = graph.copy()
        g.remove_node("conv")  # leaves bn without its input
        return g

    with pytest.raises(IRError) as e:
        run_passes(load_graph(SMALL), ["fold_bn", break_outputs, "dce"], verify_each=True)
    assert "after pass 'break_outputs'" in e.value.render()
    with pytest.raises(IRError):  # without verify_each, the result is still verified
        run_passes(load_graph(SMALL), [break_outputs])


def test_a_pass_must_not_return_its_input():
    with pytest.raises(TypeError, match="graph.copy"):
        run_passes(load_graph(SMALL), [lambda g: g])


# ---- every pipeline on every example ---------------------------------------------------
@pytest.mark.zoo
@pytest.mark.parametrize("name", EXAMPLES)
def test_pipelines_keep_outputs(name):
    g = example(name)
    for pipeline in FLOAT_PIPELINES:
        out = run_passes(g, pipeline, verify_each=True)
        if same_graph(out, g):  # nothing rewritten (always so for O0): the same program
            continue
        assert len(out) < len(g), f"{pipeline} grew {name}"
        d = rel_diff(outputs(out, inputs_for(g)), reference(name))
        assert d <= TOL, f"{name} @ {pipeline}: relative difference {d:.3g}"
    assert same_graph(run_passes(g, "O0"), g)


def test_pipelines_leave_their_input_alone():
    g = example("digits_mobilenet")
    before = param_fingerprint(g)
    for pipeline in FLOAT_PIPELINES:
        run_passes(g, pipeline)
    assert param_fingerprint(g) == before


# ---- command line ---------------------------------------------------------------------
def _cli(*args):
    from convdsl.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_cli_compile_with_opt_and_run(tmp_path):
    src = EXAMPLES_DIR / "digits_cnn.cdl"
    r = _cli("compile", src, "--opt", "O2", "--passes", "cse", "-o", tmp_path / "o2")
    assert r.exit_code == 0, r.output
    assert "fold_bn:" in r.output and "cse:" in r.output
    network = (tmp_path / "o2" / "network.cdl").read_text()
    assert "batchnorm" not in network
    assert _cli("run", tmp_path / "o2", "--save", tmp_path / "o2.npy").exit_code == 0
    assert _cli("run", src, "--save", tmp_path / "ref.npy").exit_code == 0
    r = _cli("run", src, "--opt", "O1", "--passes", "fold_bn", "--save", tmp_path / "o1.npy")
    assert r.exit_code == 0, r.output
    ref = np.load(tmp_path / "ref.npy")
    for other in ("o2.npy", "o1.npy"):
        assert rel_diff([np.load(tmp_path / other)], [ref]) <= TOL


def test_cli_unknown_names(tmp_path):
    src = EXAMPLES_DIR / "digits_cnn.cdl"
    r = _cli("compile", src, "--passes", "fold_bn,bogus", "-o", tmp_path / "x")
    assert r.exit_code == UsageError.exit_code
    assert "unknown pass or pipeline 'bogus'" in r.output and "O2" in r.output and "fold_bn" in r.output
    r = _cli("run", src, "--opt", "O9")
    assert r.exit_code == UsageError.exit_code and "O0, O1, O2" in r.output


def test_cli_opt_refused_for_an_artifact(tmp_path):
    src = EXAMPLES_DIR / "digits_cnn.cdl"
    assert _cli("compile", src, "-o", tmp_path / "a").exit_code == 0
    r = _cli("run", tmp_path / "a", "--opt", "O2")
    assert r.exit_code == UsageError.exit_code and "artifact" in r.output
