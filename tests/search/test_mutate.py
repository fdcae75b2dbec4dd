"""Mutation operators edit the program text; every mutant passes the front end or is rejected."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from convdsl.lang.parser import parse
from convdsl.search.mutate import OPERATORS, NoSite, choice_kinds, mutate, role_of, scale_width
from convdsl.search.space import Genotype, Rejected, SearchSpace

from .spaces import TINY

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "search"


def test_roles_of_hyper_parameter_names():
    assert role_of("width") == role_of("out") == role_of("c") == role_of("embed_dim") == "width"
    assert role_of("depth1") == role_of("depth") == role_of("n") == "depth"
    assert role_of("mlp_ratio") == role_of("expand") == "ratio"
    assert role_of("classes") is None and role_of("k") is None and role_of("stride") is None


def test_width_scaling_rounds_to_friendly_multiples():
    assert scale_width(32, 1.5) == 48 and scale_width(16, 0.75) == 12 and scale_width(24, 1.25) == 32
    assert scale_width(3, 0.5) == 2 and scale_width(1, 0.5) == 1


def test_choice_kinds_tell_block_choices_from_values():
    kinds = choice_kinds(SearchSpace(TINY, "<tiny>").program)
    assert kinds == {"width": "value", "depth": "value", "mixer": "block"}


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.cdl")), ids=lambda p: p.name)
def test_mutants_of_the_example_spaces_are_valid_or_rejected(path):
    """120 random mutations: each child passes parse + elaborate + verify or is Rejected (counted);
    nothing else escapes, every operator fires, and most children are valid."""
    space = SearchSpace.from_file(path)
    rng = random.Random(0)
    parent = space.sample(rng)
    space.check(parent)
    fired, valid, rejected = Counter(), 0, Counter()
    for _ in range(120):
        m = mutate(space, parent, rng)
        fired[m.operator] += 1
        assert m.child != parent
        try:
            c = space.check(m.child)
        except Rejected as e:
            rejected[e.reason] += 1
            continue
        valid += 1
        if rng.random() < 0.3:
            parent = c.genotype  # walk a little
    assert set(fired) == set(OPERATORS), fired
    assert valid >= 60, (valid, rejected)


def test_mutation_is_deterministic_given_the_generator():
    space = SearchSpace(TINY, "<tiny>")
    g = space.initial()
    a = [mutate(space, g, random.Random(7)) for _ in range(2)]
    assert a[0].child == a[1].child and a[0].detail == a[1].detail


def _mutate_with(space, g, op, seed=0):
    return mutate(space, g, random.Random(seed), operators=(op,))


def test_swap_block_changes_the_token_mixer_only():
    space = SearchSpace(TINY, "<tiny>")
    g = space.initial()
    m = _mutate_with(space, g, "swap_block")
    assert m.child.program == g.program
    assert [k for k in g.selection if g.selection[k] != m.child.selection[k]] == ["mixer"]
    assert "conv_mixer(3) ->" in m.detail


def test_scale_width_edits_the_choice_option_in_the_program():
    space = SearchSpace(TINY, "<tiny>")
    g = space.initial()  # width = choice(4, 8) with 4 selected
    m = _mutate_with(space, g, "scale_width")
    assert m.child.selection == g.selection
    assert "choice(4, 8" not in m.child.program and "width" in m.detail
    c = space.check(m.child)
    assert c.params != space.check(g).params


def test_scale_depth_edits_the_loop_count():
    space = SearchSpace(TINY, "<tiny>")
    g = Genotype(space.text, {"width": 0, "depth": 1, "mixer": 0})  # range(2)
    m = _mutate_with(space, g, "scale_depth")
    assert "2 -> 3" in m.detail or "2 -> 1" in m.detail
    assert space.check(m.child).text.count("range(") == 1


def test_skips_are_added_and_removed_in_the_text():
    space = SearchSpace(TINY, "<tiny>")
    g = space.initial()
    m = _mutate_with(space, g, "remove_skip")
    assert "x = x | choice(" in " ".join(m.child.program.split())
    back = _mutate_with(space, m.child, "add_skip", seed=1)
    c = space.check(back.child)
    assert "x = x + (x |" in c.text
    # a skip around a block that changes the width cannot elaborate: rejected, not raised
    wide = space.check(Genotype(space.text.replace("conv2d(width, 1)", "conv2d(2 * width, 1)"), g.selection))
    bad = [m for m in (_mutate_with(space, wide.genotype, "add_skip", seed) for seed in range(10))
           if "x + (x | conv2d(2 * width" in " ".join(m.child.program.split())]
    assert bad
    with pytest.raises(Rejected) as e:
        space.check(bad[0].child)
    assert "broadcast" in e.value.message


def test_a_program_without_sites_says_so():
    space = SearchSpace("network n(x: f32[N, 1, 8, 8], classes=10) {\n    return x | flatten | linear(classes)\n}\n",
                        "<p>")
    with pytest.raises(NoSite):
        mutate(space, space.initial(), random.Random(0))


@pytest.mark.slow
def test_mutants_reparse_to_the_same_program():
    space = SearchSpace(TINY, "<tiny>")
    rng = random.Random(1)
    g = space.initial()
    for _ in range(30):
        m = mutate(space, g, rng)
        assert parse(m.child.program) == parse(parse_and_print(m.child.program))


def parse_and_print(text: str) -> str:
    from convdsl.lang.format import format_source

    return format_source(text)
