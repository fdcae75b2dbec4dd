"""The pieces of convdsl.verify that the properties rely on: comparison, inputs,
weights, regression files."""
from __future__ import annotations

import numpy as np
import pytest

from convdsl.api import load_graph
from convdsl.verify import differential as D
from convdsl.verify import regressions
from convdsl.verify.draws import RandomDraw
from convdsl.verify.inputs import EDGE_KINDS, kind_for_seed, make_inputs
from convdsl.verify.programs import generate
from convdsl.verify.properties import PROPERTIES
from convdsl.verify.strategies import case_of

F32 = D.TOLERANCES["f32"]


def test_compare_scales_atol_by_the_output_magnitude() -> None:
    ref = [np.array([1000.0, 0.0], np.float32)]
    assert D.compare(ref, [np.array([1000.0, 0.009], np.float32)], F32).ok  # 0.009 <= 1e-5 * 1000
    assert not D.compare(ref, [np.array([1000.0, 0.02], np.float32)], F32).ok


def test_compare_non_finite_values_must_match() -> None:
    nan, inf = np.float32("nan"), np.float32("inf")
    ref = [np.array([nan, inf, 1.0], np.float32)]
    assert D.compare(ref, [np.array([nan, inf, 1.0], np.float32)], D.EXACT).ok
    assert not D.compare(ref, [np.array([nan, -inf, 1.0], np.float32)], F32).ok
    assert not D.compare(ref, [np.array([1.0, inf, 1.0], np.float32)], F32).ok


def test_compare_shapes_dtypes_and_counts() -> None:
    a = np.zeros((2, 3), np.float32)
    assert not D.compare([a], [a.reshape(3, 2)], F32).ok
    assert not D.compare([a], [a.astype(np.float64)], F32).ok
    assert not D.compare([a], [a, a], F32).ok


def test_the_first_seeds_are_the_edge_cases() -> None:
    assert [kind_for_seed(s) for s in range(len(EDGE_KINDS))] == list(EDGE_KINDS)
    g = load_graph("network net(x: f32[N, 3, 4]) {\n    return x | relu\n}\n")
    (zeros,) = make_inputs(g, 0, batch=5)
    assert zeros.shape == (5, 3, 4) and not zeros.any()
    (a,), (b,) = make_inputs(g, 9), make_inputs(g, 9)
    assert (a == b).all() and a.dtype == np.float32


def test_randomized_constants_change_batchnorm_statistics_only() -> None:
    g = load_graph("network net(x: f32[N, 3, 4, 4]) {\n    return x | conv2d(4, 3) | batchnorm\n}\n")
    r = D.randomize_constants(g, 1)
    assert (r.params["batchnorm.running_var"] > 0).all()
    assert not np.allclose(r.params["batchnorm.running_mean"], 0)
    assert (r.params["conv2d.weight"] == g.params["conv2d.weight"]).all()
    assert (g.params["batchnorm.running_mean"] == 0).all()  # the argument is untouched


def test_regression_files_round_trip(tmp_path) -> None:
    case = case_of(generate(RandomDraw(3)), seed=11, batch=3, kind="large", weights_seed=5)
    path = regressions.save(case, tmp_path, "twin,passes", found_by="a test", error="boom\nline 2", xfail="why")
    again, checks, xfail = regressions.load(path)
    assert (again.seed, again.batch, again.kind, again.weights_seed) == (11, 3, "large", 5)
    assert checks == ["twin", "passes"] and xfail == "why"
    assert load_graph(again.text, network="net").output_types() == load_graph(case.text).output_types()
    PROPERTIES["twin"](again)  # the twin network in the same file lines up with net


def test_an_ill_conditioned_difference_is_judged_against_the_float64_run() -> None:
    from convdsl.passes.cast import cast
    from convdsl.verify.properties import Case, PropertyFailed, _agree

    # layernorm over 2 channels of 300 + N(0, 1): torch float32 itself is ~1e-3 off the exact result
    text = "network net(x0: f32[N, 2, 8, 4]) {\n    return x0 | layernorm2d\n}\n"
    case = Case(text, seed=6200, batch=3, kind="offset")
    ref, x = case.reference()[0], case.inputs()
    exact = D.torch_runner(cast(case.graph(), "f64"))(x)[0]
    torch_err = np.abs(ref - exact).max()
    assert torch_err > 1e-4  # the premise: beyond what the f32 tolerance allows at this scale
    closer = (exact + 0.5 * (ref - exact)).astype(np.float32)  # half of torch's error
    assert not D.compare([ref], [closer], F32).ok
    _agree(case, "a backend", [closer], F32)  # no further from the exact result than torch: accepted
    farther = (exact + 3 * (ref - exact)).astype(np.float32)
    with pytest.raises(PropertyFailed, match="differs from torch eager"):
        _agree(case, "a backend", [farther], F32)


def test_a_real_difference_is_not_excused_by_the_float64_run() -> None:
    from convdsl.verify.properties import Case, PropertyFailed, _agree

    case = Case("network net(x0: f32[N, 3, 6]) {\n    return x0 | conv1d(4, 3, pad=1)\n}\n", seed=3)
    got = case.reference()[0].copy()
    got[0, 0, 0] += 0.01
    with pytest.raises(PropertyFailed):
        _agree(case, "a backend", [got], F32)


def test_half_precision_is_not_judged_on_a_nearly_constant_normalization_group() -> None:
    from convdsl.verify.properties import Case, _ill_conditioned_norm

    text = "network net(x0: f32[N, 3, 8, 8]) {\n    return x0 | instancenorm2d\n}\n"
    offset = Case(text, seed=6200, batch=2, kind="offset")  # 300 + N(0, 1): ~7 f16 steps per std
    why = _ill_conditioned_norm(offset, "f16")
    assert why and "instancenorm2d" in why and "nearly constant" in why
    assert _ill_conditioned_norm(Case(text, seed=6200, batch=2, kind="normal"), "f16") is None
    assert _ill_conditioned_norm(Case(text, seed=6200, batch=2, kind="normal"), "bf16") is None
    # the check only looks at normalizations: a conv with no norm after it is never excused
    conv = Case("network net(x0: f32[N, 3, 6]) {\n    return x0 | conv1d(4, 3, pad=1)\n}\n", seed=6200, kind="offset")
    assert _ill_conditioned_norm(conv, "f16") is None


def test_the_verdict_counts_disagreements_and_backends_that_could_not_run_apart() -> None:
    import io
    import math

    from rich.console import Console

    from convdsl.verify.differential import Report, Row, Tolerance
    from convdsl.verify.report import render

    def verdict(*rows: Row) -> str:
        out = io.StringIO()
        render(Report("net", "torch (as written)", list(rows)), Console(file=out, width=200))
        return out.getvalue().strip().splitlines()[-1]

    tol = Tolerance(1e-3, 1e-4)
    passed = Row("tvm-llvm", True, 1e-7, 1e-7, 0, 2, tol=tol)
    failed = Row("torch @ O2", False, 0.5, 0.2, 3, 2, error="output 0 differs", tol=tol)
    refused = Row("tvm-llvm-int8", False, math.inf, math.inf, error="UsageError: no quantized convs", tol=tol)
    assert verdict(passed) == "all agree"
    assert verdict(passed, failed) == "1 of 2 disagree"
    assert verdict(passed, refused) == "1 of 2 could not run (error above)"
    assert verdict(failed, refused) == "1 of 2 disagree; 1 of 2 could not run (error above)"
