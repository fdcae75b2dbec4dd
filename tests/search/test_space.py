"""Search spaces: choice keys, resolution to plain programs, the front-end check."""
from __future__ import annotations

import random

import pytest

from convdsl.errors import ChoiceError, UsageError
from convdsl.lang import ast
from convdsl.lang.elaborate import Options
from convdsl.lang.parser import parse
from convdsl.search.space import (Genotype, Rejected, SearchSpace, choices_of, iter_nodes, prune_unused,
                                  reachable, resolve)

from .spaces import ANONYMOUS, TINY


def test_choices_are_listed_with_stable_keys():
    space = SearchSpace(TINY, "<tiny>")
    assert sorted(space.choices) == ["depth", "mixer", "width"]
    assert [len(space.choices[k].options) for k in ("depth", "mixer", "width")] == [2, 3, 2]
    assert space.size() == 12


def test_anonymous_choices_are_named_by_their_position():
    space = SearchSpace(ANONYMOUS, "<anon>")
    assert sorted(space.choices) == ["2:24", "2:38"]
    assert 'name="2:24"' in space.text  # written into the program, so reformatting keeps the key
    again = SearchSpace(space.text, "<anon>")
    assert sorted(again.choices) == ["2:24", "2:38"]


def test_resolving_every_choice_gives_a_plain_program():
    space = SearchSpace(TINY, "<tiny>")
    for seed in range(6):
        c = space.check(space.sample(random.Random(seed)))
        prog = parse(c.text)
        assert not any(isinstance(n, ast.Choice) for n in iter_nodes(prog.items))
        g, _ = space.elaborate(c.text)  # no ChoiceError: nothing left to choose
        assert g.params.count() == c.params
        # the same network as elaborating the space with the selection
        g2, _ = space.elaborate(space.text, Options(choices=c.genotype.selection))
        assert sorted(g2.params.names()) == sorted(g.params.names())


def test_the_space_itself_is_not_a_plain_program():
    space = SearchSpace(TINY, "<tiny>")
    with pytest.raises(ChoiceError):
        space.elaborate(space.text)


def test_unused_blocks_and_their_comments_are_dropped():
    space = SearchSpace(TINY, "<tiny>")
    g = Genotype(space.text, {"width": 0, "depth": 0, "mixer": 1})  # fft
    c = space.check(g)
    assert "block fft_mixer" in c.text
    assert "ssm_mixer" not in c.text and "conv_mixer" not in c.text
    assert "rows-flattened" not in c.text  # the comment of the dropped block went with it
    assert "a tiny space" in c.text  # the file's header comment stays


def test_prune_keeps_what_a_network_reaches():
    prog = parse("def half(c) = c // 2\nblock a(c) = conv2d(half(c))\nblock b(c) = conv2d(c)\n"
                 "network n(x: f32[N, 1, 8, 8]) {\n    return x | a(8)\n}\n")
    names = [i.name for i in prune_unused(prog).items]
    assert names == ["half", "a", "n"]


def test_reachable_follows_only_the_selected_option():
    prog = SearchSpace(TINY, "<tiny>").program
    keys, defs = reachable(prog, {"width": 0, "depth": 0, "mixer": 2})
    assert keys == ["depth", "mixer", "width"]
    assert "ssm_mixer" in defs and "conv_mixer" not in defs


def test_hash_ignores_comments_and_selection_of_unreached_choices():
    space = SearchSpace(TINY, "<tiny>")
    a = space.check(Genotype(space.text, {"width": 0, "depth": 0, "mixer": 0}))
    b = space.check(Genotype(space.text.replace("# a tiny space", "# another comment"),
                             {"width": 0, "depth": 0, "mixer": 0}))
    assert a.hash == b.hash
    c = space.check(Genotype(space.text, {"width": 1, "depth": 0, "mixer": 0}))
    assert c.hash != a.hash


def test_invalid_candidates_are_rejected_not_raised():
    space = SearchSpace(TINY, "<tiny>")
    with pytest.raises(Rejected) as e:
        space.check(Genotype(space.text.replace("conv2d(width, 1)", "conv2d(width, 1, groups=3)"),
                             {"width": 0, "depth": 0, "mixer": 0}))
    assert e.value.reason == "elaborate"
    with pytest.raises(Rejected) as e:
        space.check(Genotype(space.text.replace("network tiny", "network tiny tiny"), {}))
    assert e.value.reason == "syntax"
    with pytest.raises(Rejected):
        space.check(Genotype(space.text, {"width": 0, "depth": 0}))  # no selection for 'mixer'
    small = SearchSpace(TINY, "<tiny>", max_params=100)
    with pytest.raises(Rejected) as e:
        small.check(small.initial())
    assert e.value.reason == "too_big"


def test_choices_in_imported_files_are_refused(tmp_path):
    (tmp_path / "lib.cdl").write_text("block m() = conv2d(k=choice(1, 3, name=\"k\"), pad=same)\n")
    text = 'import "lib.cdl"\nnetwork n(x: f32[N, 1, 8, 8]) {\n    return x | m()\n}\n'
    with pytest.raises(UsageError, match="imported file"):
        SearchSpace(text, str(tmp_path / "space.cdl"))


def test_imports_travel_with_the_space(tmp_path):
    (tmp_path / "lib.cdl").write_text("block m(c) = conv2d(c, 3, pad=1) | relu\n")
    text = ('import "lib.cdl"\nnetwork n(x: f32[N, 1, 8, 8], classes=10) {\n'
            '    return x | m(choice(4, 8, name="w")) | global_avgpool(keepdim=false) | linear(classes)\n}\n')
    space = SearchSpace(text, str(tmp_path / "space.cdl"))
    assert list(space.sources) == [str((tmp_path / "lib.cdl").resolve())]
    # a worker elaborates from the sources alone, without the file
    (tmp_path / "lib.cdl").unlink()
    c = space.check(space.sample(random.Random(0)))
    assert c.params > 0


def test_sampling_is_deterministic():
    space = SearchSpace(TINY, "<tiny>")
    a = [space.sample(random.Random(3)).selection for _ in range(2)]
    assert a[0] == a[1]
    assert choices_of(resolve(space.program, a[0])) == {}
