"""Attention ops and transformer plumbing, checked against the PyTorch modules whose
parameters they share: nn.MultiheadAttention (mhsa, cross_attention), torchvision's
ShiftedWindowAttention (window_attention) and VisionTransformer (patch_embed,
class_token, pos_embed, mhsa, select), hand-written CvT and HaloNet attention
(conv_attention, halo_attention), ConvNeXt's layer scale and torchvision's
stochastic depth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import CNBlock
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention, WindowDepartition, WindowPartition
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2, SwinTransformerBlock
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.ops import stochastic_depth

from convdsl.backends.torch import build_module, generate
from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.ops import OPS
from convdsl.ir.optable import Cost, bind_attrs
from convdsl.ir.params import materialize
from convdsl.lang.printer import print_graph
from convdsl.ir.types import TensorType
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import elaborate
from opcheck import infer1, one_op_program, run_infer

ATOL = 1e-5
NAMES = ["mhsa", "cross_attention", "window_attention", "conv_attention", "halo_attention", "patch_embed", "class_token",
         "pos_embed", "layer_scale", "drop_path", "select"]


def _net(inputs: dict[str, str], body: str):
    params = ", ".join(f"{k}: f32[{v}]" for k, v in inputs.items())
    g = verify(elaborate(f"network t({params}) {{\n    return {body}\n}}\n", "<test>"))
    return g, build_module(g)


def _load(module: nn.Module, prefix: str, state: dict) -> None:
    module.load_state_dict({f"{prefix}.{k}": v for k, v in state.items()}, strict=True)


def _specs(op: str, shapes, **kwargs):
    d = OPS[op]
    ins = [TensorType(tuple(s)) for s in shapes]
    attrs = bind_attrs(d, [], kwargs)
    if d.normalize is not None:
        attrs = d.normalize(dict(attrs), ins)
    return d.params(attrs, ins)


def _randomize(module: nn.Module, std: float = 0.3) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module.eval()


# ---- every op is complete ----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_op_is_documented_and_lowered(name):
    from convdsl.backends.torch.lowering import TORCH_LOWERINGS

    op = OPS[name]
    assert op.doc and op.example and op.shape_rule and op.group, name
    assert name in TORCH_LOWERINGS, name


# an input each op's documented example runs on
EXAMPLE_INPUTS = {"window_attention": "f32[2, 14, 14, 96]", "conv_attention": "f32[2, 64, 14, 14]",
                  "halo_attention": "f32[2, 64, 16, 16]", "patch_embed": "f32[2, 3, 32, 32]",
                  "layer_scale": "f32[2, 64, 7, 7]"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_example_elaborates_and_runs(name):
    ex = OPS[name].example
    x = EXAMPLE_INPUTS.get(name, "f32[2, 17, 64]")
    if ex.startswith("("):  # "(x, memory) | cross_attention(...)"
        text = f"network t(x: {x}, memory: f32[2, 5, 32]) {{\n    return {ex}\n}}\n"
    else:
        text = f"network t(x: {x}) {{\n    return x | {ex}\n}}\n"
    g = verify(elaborate(text, "<example>"))
    ins = [torch.randn(*g.node(i).type.shape) for i in g.inputs]
    assert tuple(build_module(g)(*ins).shape) == g.output_types()[0].shape


# ---- mhsa == nn.MultiheadAttention ---------------------------------------------------------
def test_mhsa_params_named_shaped_and_initialized_like_torch():
    mha = nn.MultiheadAttention(48, 4, batch_first=True)
    specs = _specs("mhsa", [(2, 7, 48)], heads=4)
    assert {k: s.shape for k, s in specs.items()} == {k: tuple(v.shape) for k, v in mha.state_dict().items()}
    w = materialize(specs["in_proj_weight"], 0, "w")
    bound = math.sqrt(6 / (48 + 3 * 48))  # xavier_uniform on [3C, C]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert specs["in_proj_bias"].init.kind == specs["out_proj.bias"].init.kind == "zeros"
    assert specs["out_proj.weight"].init.args == (-1 / math.sqrt(48), 1 / math.sqrt(48))
    no_bias = _specs("mhsa", [(2, 7, 48)], heads=4, qkv_bias=False, proj_bias=False)
    assert set(no_bias) == set(nn.MultiheadAttention(48, 4, bias=False).state_dict())


def _mask(kind: str, n: int, heads: int, L: int):
    g = torch.Generator().manual_seed(3)
    if kind == "float":
        return torch.randn(L, L, generator=g)
    if kind == "bool":
        m = torch.rand(L, L, generator=g) < 0.3
        m.fill_diagonal_(False)  # no fully blocked row
        return m
    if kind == "batched":
        return torch.randn(n * heads, L, L, generator=g)
    return None


@pytest.mark.parametrize("n,L,c,heads,mask,bias", [
    (3, 7, 32, 4, None, True),        # odd L, batch > 1
    (2, 9, 24, 3, "causal", True),
    (3, 5, 16, 2, "float", True),
    (2, 6, 16, 4, "bool", True),
    (2, 5, 16, 2, "batched", True),
    (1, 4, 8, 1, None, False),
])
def test_mhsa_matches_multihead_attention(n, L, c, heads, mask, bias):
    mha = _randomize(nn.MultiheadAttention(c, heads, bias=bias, batch_first=True))
    extra = "" if bias else ", qkv_bias=false, proj_bias=false"
    x = torch.randn(n, L, c)
    if mask == "causal":
        g, m = _net({"x": f"{n}, {L}, {c}"}, f"x | mhsa(heads={heads}, mask=causal{extra}) as attn")
        _load(m, "attn", mha.state_dict())
        ref = mha(x, x, x, need_weights=False, attn_mask=nn.Transformer.generate_square_subsequent_mask(L),
                  is_causal=True)[0]
        got = m(x)
    elif mask is not None:
        mk = _mask(mask, n, heads, L)
        shape = ", ".join(str(d) for d in mk.shape)
        body = f"(x, m) | mhsa(heads={heads}{extra}) as attn"
        if mask == "bool":
            g = verify(elaborate(f"network t(x: f32[{n}, {L}, {c}], m: bool[{shape}]) {{\n    return {body}\n}}\n"))
            m = build_module(g)
        else:
            g, m = _net({"x": f"{n}, {L}, {c}", "m": shape}, body)
        _load(m, "attn", mha.state_dict())
        ref = mha(x, x, x, need_weights=False, attn_mask=mk)[0]
        got = m(x, mk)
    else:
        g, m = _net({"x": f"{n}, {L}, {c}"}, f"x | mhsa(heads={heads}{extra}) as attn")
        _load(m, "attn", mha.state_dict())
        ref = mha(x, x, x, need_weights=False)[0]
        got = m(x)
    assert got.shape == ref.shape == (n, L, c)
    assert (got - ref).abs().max().item() <= ATOL


def test_mhsa_symbolic_sizes_run_at_any_length():
    mha = _randomize(nn.MultiheadAttention(16, 2, batch_first=True))
    g, m = _net({"x": "N, L, 16"}, "x | mhsa(heads=2, mask=causal) as attn")
    assert g.output_types()[0].shape == ("N", "L", 16)
    _load(m, "attn", mha.state_dict())
    for n, L in ((1, 3), (4, 11)):
        x = torch.randn(n, L, 16)
        ref = mha(x, x, x, need_weights=False, attn_mask=nn.Transformer.generate_square_subsequent_mask(L))[0]
        assert (m(x) - ref).abs().max().item() <= ATOL


def test_mhsa_relative_position_bias_and_width():
    n, L, c, heads, dim, max_len = 2, 5, 12, 2, 8, 7
    g, m = _net({"x": f"{n}, {L}, {c}"}, f"x | mhsa(heads={heads}, dim={dim}, rel_pos=true, max_len={max_len}, "
                                          f"mask=causal) as attn")
    assert g.output_types()[0].shape == (n, L, dim)
    sd = {k: v.shape for k, v in m.state_dict().items()}
    assert sd["attn.in_proj_weight"] == (3 * dim, c) and sd["attn.relative_position_bias_table"] == (2 * max_len - 1, heads)
    _randomize(m)
    p = {k.removeprefix("attn."): v for k, v in m.state_dict().items()}
    x = torch.randn(n, L, c)
    # reference: logits q k^T / sqrt(d) + table[i - j + max_len - 1], causal, softmax, values, out_proj
    q, k, v = F.linear(x, p["in_proj_weight"], p["in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, L, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
    i = torch.arange(L)
    logits = logits + p["relative_position_bias_table"][i[:, None] - i[None, :] + max_len - 1].permute(2, 0, 1)
    logits = logits.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, L, dim)
    ref = F.linear(y, p["out_proj.weight"], p["out_proj.bias"])
    assert (m(x) - ref).abs().max().item() <= ATOL
    # the table defaults to the (static) sequence length
    assert infer1("mhsa", (2, 9, 16), heads=2, rel_pos=True) == (2, 9, 16)
    assert _specs("mhsa", [(2, 9, 16)], heads=2, rel_pos=True)["relative_position_bias_table"].shape == (17, 2)


def test_mhsa_dropout_only_while_training():
    g, m = _net({"x": "2, 6, 16"}, "x | mhsa(heads=2, dropout=0.5) as attn")
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(x), m.eval()(x))


# ---- cross_attention == nn.MultiheadAttention(kdim, vdim) --------------------------------------
@pytest.mark.parametrize("c,ck,with_mask", [(32, 24, False), (16, 16, True), (16, 40, True)])
def test_cross_attention_matches_multihead_attention(c, ck, with_mask):
    n, lq, lk, heads = 3, 5, 9, 4
    mha = _randomize(nn.MultiheadAttention(c, heads, kdim=ck, vdim=ck, batch_first=True))
    specs = _specs("cross_attention", [(n, lq, c), (n, lk, ck)], heads=heads)
    assert {k: s.shape for k, s in specs.items()} == {k: tuple(v.shape) for k, v in mha.state_dict().items()}
    x, ctx = torch.randn(n, lq, c), torch.randn(n, lk, ck)
    inputs = {"x": f"{n}, {lq}, {c}", "ctx": f"{n}, {lk}, {ck}"}
    if with_mask:
        mask = torch.randn(lq, lk)
        g, m = _net({**inputs, "m": f"{lq}, {lk}"}, f"(x, ctx, m) | cross_attention(heads={heads}) as attn")
        _load(m, "attn", mha.state_dict())
        got, ref = m(x, ctx, mask), mha(x, ctx, ctx, need_weights=False, attn_mask=mask)[0]
    else:
        g, m = _net(inputs, f"(x, ctx) | cross_attention(heads={heads}) as attn")
        _load(m, "attn", mha.state_dict())
        got, ref = m(x, ctx), mha(x, ctx, ctx, need_weights=False)[0]
    assert got.shape == (n, lq, c)
    assert (got - ref).abs().max().item() <= ATOL


# ---- projection names: qkv= and proj= (issue 14 item 3) -----------------------------------------
class TimmAttention(nn.Module):
    """timm's ViT ``Attention`` as written there (a fused ``qkv`` Linear, ``proj``), the model
    whose state_dict ``mhsa(qkv="qkv", proj="proj")`` loads as it is."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, scale: float | None = None) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale if scale is not None else (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("qkv_bias,scale", [(True, None), (False, 0.2)])
def test_mhsa_with_projection_names_loads_timm_attention(qkv_bias, scale):
    ref = _randomize(TimmAttention(24, 3, qkv_bias=qkv_bias, scale=scale))
    extra = ("" if qkv_bias else ", qkv_bias=false") + (f", scale={scale}" if scale is not None else "")
    g, m = _net({"x": "2, 7, 24"}, f'x | mhsa(heads=3, qkv="qkv", proj="proj"{extra}) as "blocks.0.attn"')
    assert set(g.params.specs) == {f"blocks.0.attn.{k}" for k in ref.state_dict()}
    _load(m, "blocks.0.attn", ref.state_dict())
    x = torch.randn(2, 7, 24)
    assert (m(x) - ref(x)).abs().max().item() <= ATOL


def test_cross_attention_with_projection_names_is_multihead_attention_renamed():
    mha = _randomize(nn.MultiheadAttention(16, 4, batch_first=True))
    renamed = {k.replace("in_proj_", "to_qkv.").replace("out_proj.", "merge."): v for k, v in mha.state_dict().items()}
    g, m = _net({"x": "2, 5, 16", "ctx": "2, 9, 16"}, '(x, ctx) | cross_attention(heads=4, qkv="to_qkv", proj="merge") as a')
    _load(m, "a", renamed)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    assert (m(x, ctx) - mha(x, ctx, ctx, need_weights=False)[0]).abs().max().item() <= ATOL
    # only the output projection renamed: MultiheadAttention's separate q/k/v weights stay
    specs = _specs("cross_attention", [(2, 5, 16), (2, 9, 8)], heads=4, proj="o")
    assert set(specs) == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "o.weight", "o.bias"}


@pytest.mark.parametrize("call,err,words", [
    ('mhsa(heads=2, qkv="train")', CDLTypeError, "qkv names the projection"),  # would shadow nn.Module.train
    ('mhsa(heads=2, qkv="p", proj="p")', CDLTypeError, "distinct names"),
    ('mhsa(heads=2, proj="in_proj_weight")', CDLTypeError, "proj names the projection"),
    ('mhsa(heads=2, qkv="a.b")', CDLTypeError, "qkv names the projection"),
    ('(x, ctx) | cross_attention(heads=2, qkv="qkv")', ShapeError, "one fused q/k/v projection"),
])
def test_projection_names_are_checked(call, err, words):
    body = call if call.startswith("(") else f"x | {call}"
    with pytest.raises(err, match=words):
        elaborate(f"network t(x: f32[2, 5, 8], ctx: f32[2, 3, 6]) {{\n    return {body}\n}}\n", "<test>")


# ---- window_attention == torchvision's ShiftedWindowAttention ------------------------------------
@pytest.mark.parametrize("h,w,window,shift", [
    (8, 8, 4, 0),            # plain windows
    (8, 12, 4, 2),           # shifted
    (13, 11, 4, 2),          # padding (H, W not multiples of the window) + shift
    (5, 6, 7, 3),            # window >= size: padded to one window, shift disabled
    (9, 4, 4, 2),            # shift along H only (one window covers W)
    (8, 12, [4, 6], [2, 3]),  # rectangular windows
])
@pytest.mark.slow
def test_window_attention_matches_torchvision(h, w, window, shift):
    c, heads = 24, 3
    wl, sl = (window if isinstance(window, list) else [window] * 2), (shift if isinstance(shift, list) else [shift] * 2)
    ref = ShiftedWindowAttention(c, wl, sl, heads)
    _randomize(ref)
    g, m = _net({"x": f"2, {h}, {w}, {c}"}, f"x | window_attention(heads={heads}, window={window}, shift={shift}) as attn")
    ours = {k.removeprefix("attn.") for k in m.state_dict()}
    assert ours == set(ref.state_dict()) - {"relative_position_index"}  # a derived buffer, recomputed
    m.attn.load_state_dict(ref.state_dict(), strict=True)  # torchvision's state_dict loads as is
    x = torch.randn(2, h, w, c)
    got = m(x)
    assert got.shape == x.shape
    assert (got - ref(x)).abs().max().item() <= ATOL


def test_window_attention_loads_a_swin_block():
    """The attention of a shifted torchvision Swin block (window 7, shift 3), weights and all."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim=48, num_heads=3, window_size=[7, 7], shift_size=[3, 3]).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    g, m = _net({"x": "2, 14, 14, 48"}, "x | window_attention(heads=3, window=7, shift=3) as attn")
    m.attn.load_state_dict(block.attn.state_dict())
    x = torch.randn(2, 14, 14, 48)
    assert (m(x) - block.attn(x)).abs().max().item() <= ATOL
    specs = _specs("window_attention", [(2, 14, 14, 48)], heads=3, window=7)
    assert specs["relative_position_bias_table"].shape == (169, 3)
    assert specs["qkv.weight"].init.args == (-1 / math.sqrt(48), 1 / math.sqrt(48))  # nn.Linear default


def test_window_attention_is_maxvit_attention_with_its_scale_and_names():
    """torchvision's MaxViT attention (RelativePositionalMultiHeadAttention on window partitions,
    logits scaled by 1/sqrt(C), not 1/sqrt(head width); projections to_qkv and merge) is
    window_attention(scale=C ** -0.5, qkv="to_qkv", proj="merge") on the channels-last map."""
    torch.manual_seed(0)
    c, heads, p = 64, 2, 4
    ref = RelativePositionalMultiHeadAttention(c, c // heads, p * p).eval()
    with torch.no_grad():
        ref.relative_position_bias_table.normal_()
    g, m = _net({"x": f"2, 8, 12, {c}"},
                f'x | window_attention(heads={heads}, window={p}, scale={c} ** -0.5, qkv="to_qkv", proj="merge") as attn')
    assert set(m.attn.state_dict()) == set(ref.state_dict()) - {"relative_position_index"}  # derived, recomputed
    m.attn.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 12, c)
    want = WindowDepartition()(ref(WindowPartition()(x.permute(0, 3, 1, 2), p)), p, 8 // p, 12 // p)
    assert (m(x) - want.permute(0, 2, 3, 1)).abs().max().item() <= ATOL
    _, plain = _net({"x": f"2, 8, 12, {c}"}, f'x | window_attention(heads={heads}, window={p}, qkv="to_qkv", proj="merge") as attn')
    plain.attn.load_state_dict(ref.state_dict())
    assert (plain(x) - want.permute(0, 2, 3, 1)).abs().max().item() > 1e-3  # the default scale is not MaxViT's


# ---- window_attention(v2=true) == torchvision's ShiftedWindowAttentionV2 -----------------------------
@pytest.mark.parametrize("h,w,window,shift,qkv_bias", [
    (8, 12, 4, 2, True),            # shifted
    (13, 11, 4, 2, True),           # padding + shift
    (8, 12, [4, 6], [2, 3], False),  # rectangular windows, no q/k/v bias
])
def test_window_attention_v2_matches_torchvision(h, w, window, shift, qkv_bias):
    """Cosine attention with the learned logit scale (clamped at log 100: one head is set above it),
    the continuous position bias 16 sigmoid(cpb_mlp(coords)), and the key's bias left out (a random
    one here: torchvision zeroes it in forward, so a wrong use shows)."""
    c, heads = 24, 3
    wl, sl = (window if isinstance(window, list) else [window] * 2), (shift if isinstance(shift, list) else [shift] * 2)
    ref = _randomize(ShiftedWindowAttentionV2(c, wl, sl, heads, qkv_bias=qkv_bias)).eval()
    with torch.no_grad():
        ref.logit_scale.copy_(torch.tensor([0.5, 2.0, 6.0]).view(3, 1, 1))  # 6 > log(100): clamped
    bias = "" if qkv_bias else ", qkv_bias=false"
    g, m = _net({"x": f"2, {h}, {w}, {c}"},
                f"x | window_attention(heads={heads}, window={window}, shift={shift}, v2=true{bias}) as attn")
    derived = {"relative_position_index", "relative_coords_table"}
    assert {k.removeprefix("attn.") for k in m.state_dict()} == set(ref.state_dict()) - derived
    m.attn.load_state_dict(ref.state_dict(), strict=True)  # torchvision's state_dict loads as is
    coords = OPS["window_attention"].derived(g.node("attn").attrs, g.in_types("attn"))["relative_coords_table"]
    np.testing.assert_array_equal(coords, ref.relative_coords_table.numpy())  # the buffer, bit for bit
    x = torch.randn(2, h, w, c)
    with torch.no_grad():
        got, want = m(x), ref(x)
    assert (got - want).abs().max().item() <= ATOL * max(1.0, want.abs().max().item())


def test_window_attention_v2_params_and_refusals():
    specs = _specs("window_attention", [(2, 8, 8, 16)], heads=2, window=4, v2=True)
    assert {k: v.shape for k, v in specs.items() if "qkv" not in k and "proj" not in k} == {
        "logit_scale": (2, 1, 1), "cpb_mlp.0.weight": (512, 2), "cpb_mlp.0.bias": (512,), "cpb_mlp.2.weight": (2, 512)}
    assert specs["logit_scale"].init.args == (math.log(10.0),)  # torchvision's initial logit scale
    with pytest.raises(CDLTypeError, match="learned logit_scale"):
        _net({"x": "2, 8, 8, 16"}, "x | window_attention(heads=2, window=4, v2=true, scale=0.5)")
    with pytest.raises(CDLTypeError, match="window - 1"):
        _net({"x": "2, 8, 8, 16"}, "x | window_attention(heads=2, window=[1, 4], v2=true)")


@pytest.mark.parametrize("attrs, message", [
    ('qkv="to-qkv"', "names the projection"),
    ('qkv="_q"', "names the projection"),
    ('proj="relative_position_bias_table"', "names the projection"),
    ('qkv="m", proj="m"', "distinct names"),
    ("scale=0.0", "must be positive"),
])
def test_window_attention_refuses_bad_names_and_scales(attrs, message):
    with pytest.raises(CDLTypeError, match=message):
        _net({"x": "2, 8, 8, 16"}, f"x | window_attention(heads=2, window=4, {attrs})")


# ---- conv_attention == CvT's attention -------------------------------------------------------------
def _cvt_reference(m: nn.Module, x: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """CvT (Wu et al. 2021) Attention.forward, dw_bn projections, written out by hand."""
    n, c, h, w = x.shape

    def tokens(conv_bn, linear):
        t = conv_bn.bn(conv_bn.conv(x))
        t = linear(t.flatten(2).transpose(1, 2))
        return t.reshape(n, -1, heads, c // heads).transpose(1, 2)

    q, k, v = tokens(m.conv_proj_q, m.proj_q), tokens(m.conv_proj_k, m.proj_k), tokens(m.conv_proj_v, m.proj_v)
    attn = (q @ k.transpose(-1, -2) * scale).softmax(-1)
    y = m.proj((attn @ v).transpose(1, 2).reshape(n, -1, c))
    return y.transpose(1, 2).reshape(n, c, h, w)


def test_conv_attention_matches_cvt_reference():
    n, c, h, w, heads = 2, 32, 7, 9, 4
    g, m = _net({"x": f"{n}, {c}, {h}, {w}"}, f"x | conv_attention(heads={heads}, k=3, stride_kv=2, "
                                             f"scale={c ** -0.5}) as attn")
    _randomize(m)
    gen = torch.Generator().manual_seed(1)
    for name, buf in m.named_buffers():
        if name.endswith("running_var"):
            buf.copy_(torch.rand(c, generator=gen) + 0.5)
        elif name.endswith("running_mean"):
            buf.copy_(torch.randn(c, generator=gen) * 0.1)
    x = torch.randn(n, c, h, w)
    ref = _cvt_reference(m.attn, x, heads, c ** -0.5)
    assert m(x).shape == (n, c, h, w)
    assert (m(x) - ref).abs().max().item() <= ATOL
    keys = set(m.attn.state_dict())
    assert {"conv_proj_k.conv.weight", "conv_proj_k.bn.running_var", "proj_q.weight", "proj.bias"} <= keys
    assert m.attn.conv_proj_k.conv.stride == (2, 2) and m.attn.conv_proj_q.conv.stride == (1, 1)
    assert infer1("conv_attention", ("N", 64, 14, 14), heads=2, stride_q=2) == ("N", 64, 7, 7)


# ---- halo_attention == per-pixel neighbourhood attention ---------------------------------------------
def _halo_reference(p: dict, x: torch.Tensor, heads: int, b: int, halo: int,
                    scale: float | None = None) -> torch.Tensor:
    """Each pixel attends to the (b + 2*halo)^2 window around its b x b block, gathered per pixel."""
    n, _, h, w = x.shape
    win = b + 2 * halo
    q = F.conv2d(x, p["q.weight"], p.get("q.bias"))
    kv = F.pad(F.conv2d(x, p["kv.weight"], p.get("kv.bias")), [halo] * 4)  # keys outside the image are 0
    dim = q.shape[1]
    d = dim // heads
    rows = (torch.arange(h) // b * b)[:, None] + torch.arange(win)  # padded rows each pixel sees [H, win]
    cols = (torch.arange(w) // b * b)[:, None] + torch.arange(win)
    hood = kv[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [N, 2*dim, H, W, win, win]
    k, v = hood.reshape(n, heads, 2 * d, h, w, win * win).split(d, dim=2)
    ky, kx = torch.arange(win).repeat_interleave(win), torch.arange(win).repeat(win)
    ry = ky[None, :] - (torch.arange(h) % b)[:, None] + win - 1  # key row - query row within the block
    rx = kx[None, :] - (torch.arange(w) % b)[:, None] + win - 1
    rel = p["pos_embed.height_rel"][ry][:, None] + p["pos_embed.width_rel"][rx][None, :]  # [H, W, win^2, d]
    qv = q.reshape(n, heads, d, h, w)
    logits = (torch.einsum("nhdyx,nhdyxk->nhyxk", qv, k) * (scale if scale is not None else 1 / math.sqrt(d))
              + torch.einsum("nhdyx,yxkd->nhyxk", qv, rel))
    return torch.einsum("nhyxk,nhdyxk->nhdyx", logits.softmax(-1), v).reshape(n, dim, h, w)


@pytest.mark.parametrize("c,dim,h,w,heads,block,halo,bias", [
    (16, 16, 8, 12, 2, 4, 1, False), (8, 24, 6, 9, 3, 3, 2, True), (16, 16, 8, 8, 4, 8, 3, False),
])
@pytest.mark.slow
def test_halo_attention_matches_neighbourhood_reference(c, dim, h, w, heads, block, halo, bias):
    g, m = _net({"x": f"2, {c}, {h}, {w}"}, f"x | halo_attention(heads={heads}, block_size={block}, halo={halo}, "
                                            f"dim={dim}, qkv_bias={str(bias).lower()}) as attn")
    assert g.output_types()[0].shape == (2, dim, h, w)
    _randomize(m, 0.5)
    p = {k.removeprefix("attn."): v for k, v in m.state_dict().items()}
    win = block + 2 * halo
    # timm's HaloAttn names and shapes (kv holds [k | v] per head)
    assert p["kv.weight"].shape == (2 * dim, c, 1, 1) and p["pos_embed.height_rel"].shape == (2 * win - 1, dim // heads)
    x = torch.randn(2, c, h, w)
    assert (m(x) - _halo_reference(p, x, heads, block, halo)).abs().max().item() <= ATOL


def test_halo_attention_scale_multiplies_the_content_logits_only():
    """timm's HaloAttn scales q.k, not the relative position logits."""
    g, m = _net({"x": "2, 8, 8, 8"}, "x | halo_attention(heads=2, block_size=4, halo=1, scale=0.7) as attn")
    _randomize(m, 0.5)
    p = {k.removeprefix("attn."): v for k, v in m.state_dict().items()}
    x = torch.randn(2, 8, 8, 8)
    assert (m(x) - _halo_reference(p, x, 2, 4, 1, scale=0.7)).abs().max().item() <= ATOL


# ---- the whole tiny ViT == torchvision's VisionTransformer --------------------------------------------
VIT = """
block mlp(hidden, out) = linear(hidden) as "0" | gelu | linear(out) as "3"

block encoder_block(heads, width, mlp_dim)(x) {
    x = x + (x | layernorm(eps=1e-6) as ln_1 | mhsa(heads=heads) as self_attention)
    return x + (x | layernorm(eps=1e-6) as ln_2 | mlp(mlp_dim, width) as mlp)
}

network vit(image: f32[N, 3, 32, 32], classes=10) {
    x = image | patch_embed(16, 8) as conv_proj | class_token as cls | pos_embed as "encoder.pos"
    for i in range(2) {
        x = x | encoder_block(2, 16, 32) as "encoder.layers.encoder_layer_{i}"
    }
    return x | layernorm(eps=1e-6) as "encoder.ln" | select(0) | linear(classes) as "heads.head"
}
"""
# torchvision key -> convdsl key; every other key is identical
VIT_RENAME = {"class_token": "cls.class_token", "encoder.pos_embedding": "encoder.pos.pos_embedding"}


@pytest.mark.slow
def test_tiny_vit_matches_torchvision():
    ref = _randomize(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                       mlp_dim=32, num_classes=10))
    g = verify(elaborate(VIT, "<vit>"))
    m = build_module(g)
    state = {VIT_RENAME.get(k, k): v for k, v in ref.state_dict().items()}
    assert set(state) == set(m.state_dict())
    assert g.params.count() == sum(p.numel() for p in ref.parameters())
    m.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    assert (m(x) - ref(x)).abs().max().item() <= ATOL


# ---- patch_embed, class_token, pos_embed, layer_scale, drop_path, select ---------------------------------
def test_patch_embed_is_a_strided_conv_then_tokens():
    g, m = _net({"x": "2, 3, 32, 24"}, "x | patch_embed(20, 8) as conv_proj")
    assert g.output_types()[0].shape == (2, 12, 20)
    _randomize(m)
    conv = nn.Conv2d(3, 20, 8, stride=8)
    conv.load_state_dict({k.removeprefix("conv_proj."): v for k, v in m.state_dict().items()})
    x = torch.randn(2, 3, 32, 24)
    torch.testing.assert_close(m(x), conv(x).flatten(2).transpose(1, 2))
    specs = _specs("patch_embed", [(2, 3, 32, 24)], dim=20, patch=8)
    assert specs["weight"].init.args == (-1 / math.sqrt(3 * 64), 1 / math.sqrt(3 * 64))
    assert infer1("patch_embed", ("N", 3, 224, 224), 768, 16) == ("N", 196, 768)
    assert infer1("patch_embed", (1, 3, 32, 48), 8, [4, 8]) == (1, 48, 8)
    assert set(_specs("patch_embed", [(1, 3, 16, 16)], dim=8, patch=4, bias=False)) == {"weight"}


def test_class_token_pos_embed_and_select_numbers():
    g, m = _net({"x": "2, 5, 8"}, "x | class_token as cls | pos_embed as pos | select(0)")
    _randomize(m)
    x = torch.randn(2, 5, 8)
    tok, pos = m.state_dict()["cls.class_token"], m.state_dict()["pos.pos_embedding"]
    assert tok.shape == (1, 1, 8) and pos.shape == (1, 6, 8)
    full = torch.cat([tok.expand(2, -1, -1), x], dim=1) + pos
    torch.testing.assert_close(m(x), full[:, 0])
    assert infer1("class_token", ("N", "L", 8), tokens=2) == ("N", "L+2", 8)
    spec = _specs("pos_embed", [(2, 6, 8)])["pos_embedding"]
    assert spec.init.kind == "normal" and spec.init.args == (0.0, 0.02)  # torchvision ViT
    assert _specs("class_token", [(2, 6, 8)])["class_token"].init.kind == "zeros"
    assert infer1("select", (2, 5, 8), -1, dim=-1) == (2, 5)
    g, m = _net({"x": "2, 5, 8"}, "x | select(-2, dim=1)")
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(m(x), x[:, -2])


def test_sinusoidal_positions_match_the_formula():
    g, m = _net({"x": "N, L, 6"}, "x | pos_embed(sinusoidal)")
    assert not m.state_dict()
    x = torch.zeros(1, 5, 6)
    pos, i = torch.arange(5.0)[:, None], torch.arange(3.0)[None, :]
    angle = pos / 10000 ** (2 * i / 6)
    want = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(5, 6)  # PE(p, 2i) = sin, PE(p, 2i+1) = cos
    torch.testing.assert_close(m(x)[0], want)


def test_layer_scale_layouts_and_convnext_names():
    cn = CNBlock(16, layer_scale=1e-6, stochastic_depth_prob=0.0)
    specs = _specs("layer_scale", [(2, 16, 7, 7)], layout="first")
    assert specs["layer_scale"].shape == tuple(cn.layer_scale.shape) == (16, 1, 1)
    assert specs["layer_scale"].init.args == (1e-6,)
    assert _specs("layer_scale", [(2, 49, 16)])["layer_scale"].shape == (16,)
    g, m = _net({"x": "2, 16, 3, 3"}, "x | layer_scale(0.5, layout=first) as ls")
    with torch.no_grad():
        m.ls.layer_scale.copy_(torch.arange(16.0).view(16, 1, 1))
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(m(x), x * torch.arange(16.0).view(1, 16, 1, 1))
    g, m = _net({"x": "2, 4, 16"}, "x | layer_scale(0.5)")
    torch.testing.assert_close(m(x := torch.randn(2, 4, 16)), x * 0.5)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_drop_path_is_identity_in_eval_and_stochastic_depth_in_training(mode):
    g, m = _net({"x": "8, 4, 5"}, f"x | drop_path(0.4, mode={mode}) as dp")
    x = torch.randn(8, 4, 5)
    assert torch.equal(m.eval()(x), x)
    m.train()
    torch.manual_seed(7)
    got = m(x)
    torch.manual_seed(7)
    torch.testing.assert_close(got, stochastic_depth(x, 0.4, mode, training=True))
    assert not m.state_dict()


# ---- shape rules and errors ----------------------------------------------------------------------
def test_shape_errors_are_clear():
    with pytest.raises(ShapeError, match="48 channels cannot be split into 5 heads") as e:
        infer1("mhsa", (2, 7, 48), heads=5)
    assert "1, 2, 3, 4, 6, 8, 12, 16, 24, 48" in e.value.hint
    with pytest.raises(ShapeError, match=r"tokens \[N, L, C\]") as e:
        infer1("mhsa", (2, 3, 8, 8), heads=1)
    assert "patch_embed" in e.value.hint
    with pytest.raises(ShapeError, match="static channel count"):
        infer1("mhsa", (2, 7, "C"), heads=1)
    with pytest.raises(ShapeError, match="mask does not fit"):
        run_infer("mhsa", [(2, 7, 16), (7, 6)], heads=2)
    with pytest.raises(ShapeError, match="mask does not fit"):
        run_infer("mhsa", [(2, 7, 16), (3, 7, 7)], heads=2)
    assert run_infer("mhsa", [(2, 7, 16), (4, 7, 7)], heads=2) == [(2, 7, 16)]
    with pytest.raises(CDLTypeError, match="mask") as e:
        infer1("mhsa", (2, 7, 16), heads=2, mask="causel")
    assert "did you mean 'causal'" in e.value.hint
    with pytest.raises(ShapeError, match="static sequence length"):
        infer1("mhsa", (2, "L", 16), heads=2, rel_pos=True)
    assert infer1("mhsa", (2, "L", 16), heads=2, rel_pos=True, max_len=64) == (2, "L", 16)
    with pytest.raises(ShapeError, match="exceeds max_len"):
        infer1("mhsa", (2, 9, 16), heads=2, rel_pos=True, max_len=8)
    with pytest.raises(CDLTypeError, match="rel_pos"):
        infer1("mhsa", (2, 9, 16), heads=2, max_len=8)
    with pytest.raises(CDLTypeError, match="probability"):
        infer1("mhsa", (2, 9, 16), heads=2, dropout=1.5)
    with pytest.raises(ShapeError, match="different batch sizes"):
        run_infer("cross_attention", [(2, 5, 16), (3, 5, 16)], heads=2)
    with pytest.raises(ShapeError, match="30 attention channels"):
        run_infer("cross_attention", [(2, 5, 16), (2, 5, 16)], heads=4, dim=30)
    with pytest.raises(ShapeError, match="channels-last"):
        infer1("window_attention", (2, 8, 8), heads=2)
    with pytest.raises(CDLTypeError, match=r"shift must be in \[0, window\)"):
        infer1("window_attention", (2, 8, 8, 16), heads=2, window=4, shift=4)
    with pytest.raises(ShapeError, match="cannot be split into 3 heads"):
        infer1("conv_attention", (2, 16, 8, 8), heads=3)
    with pytest.raises(ShapeError, match="not a multiple of block_size=4"):
        infer1("halo_attention", (2, 16, 8, 10), heads=2, block_size=4)
    with pytest.raises(ShapeError, match="not a multiple of the patch size"):
        infer1("patch_embed", (2, 3, 30, 32), 16, 8)
    with pytest.raises(ShapeError, match="static sequence length"):
        infer1("pos_embed", (2, "L", 16))
    assert infer1("pos_embed", (2, "L", 16), "sinusoidal") == (2, "L", 16)
    with pytest.raises(ShapeError, match="even channel count"):
        infer1("pos_embed", (2, 5, 7), "sinusoidal")
    with pytest.raises(ShapeError, match="index 5 is out of range"):
        infer1("select", (2, 5, 8), 5)
    with pytest.raises(ShapeError, match="dim 3 is out of range"):
        infer1("select", (2, 5, 8), 0, dim=3)
    with pytest.raises(CDLTypeError, match="probability"):
        infer1("drop_path", (2, 5), 1.5)


def test_shape_error_in_a_program_points_at_the_op():
    with pytest.raises(ShapeError) as e:
        elaborate("network t(x: f32[2, 7, 48]) {\n    return x | mhsa(heads=5)\n}\n", "<t>")
    text = e.value.render()
    assert "<t>:2:" in text and "^" in text and "hint: heads that divide 48" in text


def test_costs_count_projections_and_attention():
    n, L, c, heads = 2, 10, 16, 4
    x = TensorType((n, L, c))
    attrs = bind_attrs(OPS["mhsa"], [], {"heads": heads})
    attrs = OPS["mhsa"].normalize(dict(attrs), [x])
    cost = OPS["mhsa"].cost(attrs, [x], [x])
    proj = n * L * c * 3 * c + n * L * c * c
    assert cost.macs == proj + 2 * n * L * L * c  # + QK^T + AV
    assert cost.flops > 2 * cost.macs
    wx = TensorType((1, 14, 14, 16))
    wa = bind_attrs(OPS["window_attention"], [], {"heads": 2, "window": 7})
    assert OPS["window_attention"].cost(wa, [wx], [wx]).macs == 196 * 16 * 64 + 4 * 2 * 49 * 49 * 16
    assert OPS["select"].cost({}, [x], [x]) == Cost(0, 0)


@pytest.mark.slow
def test_printer_round_trip_and_generated_source():
    text = ("network t(x: f32[N, 16, 64], m: f32[16, 16]) {\n"
            "    y = (x, m) | mhsa(heads=4, mask=causal) | mhsa(heads=2, rel_pos=true)\n"
            "    return y | layer_scale | drop_path(0.1) | select(0)\n}\n")
    g = verify(elaborate(text, "<t>"))
    printed = print_graph(g)
    h = verify(elaborate(printed, "<printed>"))
    assert [(n.op, n.attrs) for n in g.nodes()] == [(n.op, n.attrs) for n in h.nodes()]
    src = generate(g).source
    assert "Attention(64, 4, causal=True)" in src and "Attention(64, 2, max_len=16)" in src
    assert "[:, 0]" in src and "import convdsl" not in src
