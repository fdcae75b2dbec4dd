"""The net catches fish: break one torch lowering on purpose and the property suite must
find a counterexample, shrunk to a small program.

The broken lowering is used by the in-memory module *and* the standalone file (they are
one source), so comparing those two cannot notice it.  The twin property can: each
program is also written another way (explicit ``pad(...)`` before an unpadded conv, an
explicit attention scale), which reaches different lowerings.  With TVM installed,
torch-vs-tvm is a second, independent net.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import Phase, given, settings

from convdsl.backends.torch import TORCH_LOWERINGS, TorchLowering, lowering
from convdsl.verify.properties import PropertyFailed, prop_twin
from convdsl.verify.strategies import cases

FISHING = settings(max_examples=100, database=None, derandomize=True, deadline=None,
                   suppress_health_check=list(__import__("hypothesis").HealthCheck))


def _caught(strategy, shrink: bool = True) -> list:
    """Run the twin property over ``strategy``; return the failing cases seen (last = shrunk)."""
    failures = []
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(FISHING, phases=phases)
    @given(strategy)
    def prop(case):
        try:
            prop_twin(case)
        except PropertyFailed:
            failures.append(case)
            raise

    with pytest.raises(PropertyFailed):
        prop()
    return failures


def _statements(text: str) -> list[str]:
    body = text.split("network net", 1)[1]
    return [l for l in body.splitlines() if re.match(r"\s+t\d", l)]


def test_a_conv_lowering_that_forgets_its_padding_mode_is_caught(monkeypatch) -> None:
    good = TORCH_LOWERINGS["conv2d"]

    def module(node, ins):  # circular/reflect/replicate padding silently becomes zeros
        return re.sub(r", padding_mode='\w+'", "", good.module(node, ins))

    broken = TORCH_LOWERINGS.replacing("conv2d", TorchLowering(good.call, module, good.helpers))
    monkeypatch.setattr(lowering, "TORCH_LOWERINGS", broken)
    failures = _caught(cases(max_statements=2, focus=("conv",), kinds=("img",)))
    smallest = failures[-1]
    assert "pad_mode=" in smallest.text
    assert len(_statements(smallest.text)) <= 2, smallest.text


def test_an_attention_lowering_with_the_wrong_default_scale_is_caught(monkeypatch) -> None:
    good = TORCH_LOWERINGS["mhsa"]

    def module(node, ins):  # 1/sqrt(width) instead of 1/sqrt(width / heads)
        text = good.module(node, ins)
        if node.attrs["scale"] is None:
            width = node.attrs["dim"] or ins[0].shape[2]
            text = text[:-1] + f", scale={width ** -0.5!r})"
        return text

    monkeypatch.setattr(lowering, "TORCH_LOWERINGS", TORCH_LOWERINGS.replacing("mhsa", TorchLowering(good.call, module,
                                                                                                  good.helpers)))
    # caught without shrinking (shrinking is shown on the conv above; here it takes minutes)
    failures = _caught(cases(max_statements=2, focus=("tokens",), kinds=("tok",)), shrink=False)
    assert "mhsa(" in failures[-1].text


def test_the_unbroken_lowerings_pass_the_same_search() -> None:
    """Control: with the real lowerings the same searches find nothing."""

    @settings(max_examples=40, database=None, derandomize=True, deadline=None)
    @given(cases(max_statements=2, focus=("conv",), kinds=("img",)))
    def prop(case):
        prop_twin(case)

    prop()
