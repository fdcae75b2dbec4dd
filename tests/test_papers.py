"""The seed-paper blocks (examples/papers/*.cdl): each elaborates and passes
verify(), has the output shape we expect, runs a forward pass on a batch of 2
with finite outputs, and passes `convdsl check` and `convdsl stats --json`.
The search space (nasnet_cell) is elaborated with every choice at its first
option, and checked from the command line with --choose KEY=0 for each key.
A few blocks are also checked for what they compute: the galaxy net's exact
invariance, the fixed Gabor bank, the GCN layer, and gnConv / ConvGLU against
direct PyTorch transcriptions of the papers' reference code."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from convdsl.backends.torch import build_module
from convdsl.cli import main
from convdsl.ir.types import bind_dim
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import Options, elaborate, elaborate_file, load_program

PAPERS = Path(__file__).resolve().parent.parent / "examples" / "papers"
BATCH = 2
SEARCH_SPACES = {"nasnet_cell"}  # programs with choice(...): elaborated at their first choices

# example -> (sizes for its symbolic dims, expected output shape at those sizes)
EXPECTED: dict[str, tuple[dict[str, int], tuple[int, ...]]] = {
    "convnext_block": ({"N": BATCH, "H": 14, "W": 14}, (BATCH, 96, 14, 14)),
    "cvt_stage": ({"N": BATCH}, (BATCH, 64, 8, 8)),
    "uniformer_block": ({"N": BATCH}, (BATCH, 128, 8, 8)),
    "halonet_block": ({"N": BATCH}, (BATCH, 128, 16, 16)),
    "moat_block": ({"N": BATCH}, (BATCH, 128, 8, 8)),
    "hornet_gnconv": ({"N": BATCH}, (BATCH, 64, 16, 16)),
    "unireplknet_block": ({"N": BATCH}, (BATCH, 48, 32, 32)),
    "cfsr": ({"N": BATCH, "H": 12, "W": 17}, (BATCH, 3, 24, 34)),  # x2 super-resolution
    "transnext_convglu": ({"N": BATCH}, (BATCH, 14, 14, 64)),
    "crossvit": ({"N": BATCH}, (BATCH, 10)),
    "convit_gpsa": ({"N": BATCH}, (BATCH, 10)),
    "ninformer": ({"N": BATCH}, (BATCH, 10)),
    "mirnet_mrb": ({"N": BATCH}, (BATCH, 3, 32, 32)),
    "affnet": ({"N": BATCH}, (BATCH, 10)),
    "gfnet": ({"N": BATCH}, (BATCH, 10)),
    "s4d_classifier": ({"N": BATCH}, (BATCH, 10)),
    "sgconv_classifier": ({"N": BATCH}, (BATCH, 10)),
    "hyena_block": ({"N": BATCH}, (BATCH, 512, 64)),
    "serpent": ({"N": BATCH}, (BATCH, 3, 16, 16)),
    "d3net_block": ({"N": BATCH}, (BATCH, 5, 32, 32)),
    "clutter_filter_3d": ({"N": BATCH}, (BATCH, 1, 32, 32, 8)),
    "galaxy_rotinv": ({"N": BATCH}, (BATCH, 37)),
    "gabor_texture": ({"N": BATCH}, (BATCH, 10)),
    "gcn": ({"N": BATCH}, (BATCH, 12, 3)),
    "tvconv": ({"N": BATCH}, (BATCH, 10)),
    "vit_resnas": ({"N": BATCH}, (BATCH, 10)),
    "nasnet_cell": ({"N": BATCH}, (BATCH, 10)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small forward passes run faster on one thread than on two contending ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _papers() -> list[str]:
    return sorted(p.stem for p in PAPERS.glob("*.cdl"))


@lru_cache(maxsize=None)
def _graph(name: str):
    return verify(elaborate_file(PAPERS / f"{name}.cdl", None, Options(first_choice=name in SEARCH_SPACES)))


def _inputs(g, bind: dict[str, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*(bind_dim(d, bind) for d in t.shape), generator=gen) for t in g.input_types()]


def _cli_args(name: str) -> list[str]:
    args = [str(PAPERS / f"{name}.cdl")]
    if name in SEARCH_SPACES:
        for key in _graph(name).choices:
            args += ["--choose", f"{key}=0"]
    return args


def test_every_paper_example_has_an_expectation():
    assert _papers() == sorted(EXPECTED), "add new examples/papers/*.cdl to EXPECTED"


@pytest.mark.parametrize("path", sorted(PAPERS.glob("**/*.cdl")), ids=lambda p: str(p.relative_to(PAPERS)))
def test_starts_with_a_comment_citing_the_paper(path: Path):
    text = path.read_text()
    assert text.startswith("#"), "say what the block computes and cite its paper"
    head = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert any(str(year) in head for year in range(2014, 2027)), "cite the paper with its year"


@pytest.mark.parametrize("path", sorted((PAPERS / "blocks").glob("*.cdl")), ids=lambda p: p.name)
def test_block_library_loads(path: Path):
    _, mod = load_program(path.read_text(), str(path))
    assert mod.names and not mod.program.networks()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_shape(name: str):
    bind, shape = EXPECTED[name]
    (out,) = _graph(name).output_types()
    assert tuple(bind_dim(d, bind) for d in out.shape) == shape, str(out)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_pass(name: str):
    bind, shape = EXPECTED[name]
    g = _graph(name)
    assert g.params.count() > 0
    module = build_module(g).eval()
    with torch.no_grad():
        y = module(*_inputs(g, bind))
    assert tuple(y.shape) == shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_and_stats_commands(name: str):
    runner = CliRunner()
    check = runner.invoke(main, ["check", *_cli_args(name)])
    assert check.exit_code == 0, check.output
    assert "OK" in check.output
    stats = runner.invoke(main, ["stats", "--json", *_cli_args(name)])
    assert stats.exit_code == 0, stats.output
    totals = json.loads(stats.output)["totals"]
    assert totals["params"] == _graph(name).params.count()
    assert totals["macs"] > 0 and totals["layers"] == len(json.loads(stats.output)["layers"])


def test_search_space_is_checked_but_not_compiled_without_choices(tmp_path):
    check = CliRunner().invoke(main, ["check", str(PAPERS / "nasnet_cell.cdl")])
    assert check.exit_code == 0 and "search space: 20 open choice(s)" in check.output, check.output
    result = CliRunner().invoke(main, ["compile", str(PAPERS / "nasnet_cell.cdl"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 7 and "--choose b0.in_a=INDEX" in result.output


def test_search_space_choices_change_the_cell():
    first = _graph("nasnet_cell")
    choices = {key: 0 for key in first.choices}
    choices.update({"b0.op_a": 4, "b4.in_a": 5, "b2.op_b": 5})  # max pool, the newest state, identity
    other = verify(elaborate_file(PAPERS / "nasnet_cell.cdl", None, Options(choices=choices)))
    assert other.params.count() < first.params.count()
    assert any(n.op == "maxpool2d" for n in other.nodes()) and not any(n.op == "maxpool2d" for n in first.nodes())


def test_galaxy_net_is_invariant_to_the_symmetries_of_the_square():
    g = _graph("galaxy_rotinv")
    module = build_module(g).eval()
    (x,) = _inputs(g, {"N": BATCH})
    with torch.no_grad():
        y = module(x)
        for view in (torch.rot90(x, 1, (2, 3)), torch.rot90(x, 2, (2, 3)), torch.flip(x, (3,)),
                     torch.rot90(torch.flip(x, (2,)), 1, (2, 3))):
            torch.testing.assert_close(module(view), y, rtol=1e-5, atol=1e-6)


def test_gabor_branch_is_a_fixed_gabor_bank():
    g = _graph("gabor_texture")
    frozen = [name for name in g.params.names() if not g.params.specs[name].trainable]
    assert sorted(frozen) == ["texture.gabor.0.weight", "texture.gabor.1.weight"]
    w = np.asarray(g.params["texture.gabor.0.weight"])
    assert w.shape == (8, 3, 11, 11)
    np.testing.assert_allclose(w.sum(axis=(2, 3)), 0.0, atol=1e-6)  # zero-mean filters
    assert not np.allclose(w[0], w[2])                               # orientations differ


def test_gcn_layer_is_normalized_adjacency_times_features_times_weights():
    g = _graph("gcn")
    module = build_module(g).eval()
    x, a = _inputs(g, {"N": BATCH})
    p = {k: torch.from_numpy(np.asarray(v)) for k, v in g.params.items()}
    h = torch.relu(a @ x @ p["layers.0.linear.weight"].T + p["layers.0.linear.bias"])
    want = a @ h @ p["layers.1.linear.weight"].T + p["layers.1.linear.bias"]
    with torch.no_grad():
        torch.testing.assert_close(module(x, a), want, rtol=1e-4, atol=1e-5)


# ---- blocks checked against direct PyTorch transcriptions of the papers' reference code -----
def _block(file: str, call: str, shape: tuple[int, ...]):
    """A one-block network importing `file`, its module, and its parameters as tensors."""
    dims = ", ".join(str(d) for d in shape)
    src = f'import "{file}" as p\nnetwork t(x: f32[{dims}]) {{\n    return x | p.{call} as b\n}}\n'
    g = verify(elaborate(src, str(PAPERS / "_test.cdl"), "t"))
    params = {k[2:]: torch.from_numpy(np.asarray(v)) for k, v in g.params.items()}
    return build_module(g).eval(), params


def _conv(x, p, name, **kw):
    return torch.nn.functional.conv2d(x, p[f"{name}.weight"], p[f"{name}.bias"], **kw)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_gnconv_matches_hornet_reference(order):
    module, p = _block("hornet_gnconv.cdl", f"gnconv({order})", (2, 32, 8, 8))
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(1))
    dims = [32 // 2 ** i for i in range(order)][::-1]                  # HorNet's gnconv, written out
    pwa, abc = torch.split(_conv(x, p, "proj_in"), (dims[0], sum(dims)), dim=1)
    dw = torch.split(_conv(abc, p, "dwconv", padding=3, groups=sum(dims)) / 3, dims, dim=1)
    y = pwa * dw[0]
    for i in range(order - 1):
        y = _conv(y, p, f"pws.{i}") * dw[i + 1]
    with torch.no_grad():
        torch.testing.assert_close(module(x), _conv(y, p, "proj_out"), rtol=1e-4, atol=1e-5)


def test_conv_glu_matches_transnext_reference():
    module, p = _block("transnext_convglu.cdl", "conv_glu", (2, 6, 5, 24))
    x = torch.randn(2, 6, 5, 24, generator=torch.Generator().manual_seed(2))
    F = torch.nn.functional
    h, v = F.linear(x.flatten(1, 2), p["fc1.weight"], p["fc1.bias"]).chunk(2, dim=-1)   # tokens [N, L, C]
    hidden = h.shape[-1]
    h = h.transpose(1, 2).reshape(2, hidden, 6, 5)
    h = F.gelu(_conv(h, p, "dwconv.dwconv", padding=1, groups=hidden).flatten(2).transpose(1, 2))
    want = F.linear(h * v, p["fc2.weight"], p["fc2.bias"]).reshape(2, 6, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, rtol=1e-4, atol=1e-5)
