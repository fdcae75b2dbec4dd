"""convdsl import through torch.export: the program equals the source model (same outputs, the
source's state_dict loads as is), and it reads like the hand-written examples (blocks, loops)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from convdsl.api import import_model
from convdsl.backends.torch import build_module
from convdsl.errors import ModelImportError, TraceError
from convdsl.ir.weights import derived_buffers


def _check(model, x, tol=1e-5, literal=()):
    """Outputs match, and the compiled module's state_dict has exactly the source's keys (less the
    buffers an op recomputes, and the constant integer index buffers named in `literal`, which the
    importer writes into the program as index lists): each loads the other's as is."""
    r = import_model(model, (x,))
    mod = build_module(r.graph)
    # buffers the source stores and the op recomputes (Swin's relative_position_index: OpDef.derived)
    derived = (set(derived_buffers(r.graph)) | set(literal)) & set(model.state_dict())
    assert set(mod.state_dict()) == set(model.state_dict()) - derived
    assert r.renamed == {}
    mod.load_state_dict({k: v for k, v in model.state_dict().items() if k not in derived})
    model.load_state_dict(mod.state_dict(), strict=not derived)
    with torch.no_grad():
        a, b = model(x), mod(x)
    assert float((a - b).abs().max()) <= tol * max(float(a.abs().max()), 1e-6)
    return r


def _randomize(model):
    """Source models zero-initialize some tables and heads (ViT's pos_embedding, class_token, head):
    random values, so a parameter read at the wrong place shows in the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def _tv_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=5)


def _tv_convnext():  # convnext_tiny's structure (torchvision's CNBlock with layer_scale), smaller
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], stochastic_depth_prob=0.1,
                    num_classes=5)


def _timm_vit():  # timm's VisionTransformer: cls_token, pos_embed on the root, LayerScale gamma
    timm = pytest.importorskip("timm")
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                            num_heads=2, num_classes=5, init_values=1e-5)


def _timm_convnext():  # timm's ConvNeXt blocks keep their layer scale as `gamma`
    timm = pytest.importorskip("timm")
    return timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5)


@pytest.mark.parametrize("make", [_tv_vit, _tv_convnext, _timm_vit, _timm_convnext],
                         ids=["torchvision_vit", "torchvision_convnext", "timm_vit", "timm_convnext"])
def test_parameters_on_non_leaf_modules_keep_their_keys(make):
    """ViT's class_token and encoder.pos_embedding, ConvNeXt's features.1.0.layer_scale, timm's cls_token,
    pos_embed and gamma live on modules that also hold other modules: the program names them exactly
    (`as param`), so the compiled module's state_dict is the source's, key for key."""
    model = _randomize(make())
    r = _check(model, torch.randn(2, 3, 32, 32))
    assert " as param " in r.text


def test_resnet18_imports_with_blocks_and_loops():
    torch.manual_seed(0)
    r = _check(torchvision.models.resnet18().eval(), torch.randn(2, 3, 64, 64))
    assert "block basic_block(" in r.text
    assert 'as "layer1.0"' in r.text or "layer1.{i}" in r.text
    assert r.graph.input_types()[0].shape[0] == "N"  # the batch stays symbolic
    assert r.text.count("\n") < 60


def test_resnet50_loops_over_identical_blocks():
    r = _check(torchvision.models.resnet50().eval(), torch.randn(2, 3, 64, 64))
    assert 'for i in range(1, 6) {' in r.text and 'as "layer3.{i}"' in r.text
    assert r.text.count("\n") <= 90  # at most 1.5x examples/resnet50.cdl + blocks/resnet.cdl (60 lines)


def test_multihead_attention_module_becomes_mhsa():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            y, _ = self.attn(x, x, x, need_weights=False)
            return self.fc(x + y)

    r = _check(Net().eval(), torch.randn(2, 5, 16))
    assert "mhsa(4" in r.text


def test_sdpa_becomes_matmul_softmax():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(8, 8)

        def forward(self, x):
            q = self.q(x)
            return torch.nn.functional.scaled_dot_product_attention(q, x, x)

    r = _check(Net().eval(), torch.randn(2, 5, 8))
    assert "softmax" in r.text and " @ " in r.text


def test_unmapped_op_is_a_located_error():
    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    with pytest.raises(ModelImportError) as e:
        import_model(Net().eval(), (torch.randn(2, 4),))
    msg = e.value.render()
    assert "cumsum" in msg and "no convdsl mapping" in msg
    assert e.value.span is not None and e.value.span.file.endswith("test_import_torch.py")


def test_data_dependent_control_flow_is_a_trace_error():
    class Net(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(TraceError) as e:
        import_model(Net().eval(), (torch.randn(2, 4),))
    assert e.value.exit_code == 13


def test_reshape_into_a_multiple_of_the_batch_and_back():
    """MobileViT's unfold (timm mobilevit.py): reshape(B * C * nh, ph, nw, pw).  torch.export's size is
    an expression of the batch (4*s0*...), which the reshape spec must write as its -1, not as the
    batch copied (0)."""

    class Unfold(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            x = self.conv(x)
            b, c, h, w = x.shape
            y = x.reshape(b * c * (h // 2), 2, w // 2, 2).transpose(1, 2)
            y = y.reshape(b, c * (h // 2) * (w // 2), -1) * 2.0
            return y.reshape(b, c, h, w)

    r = _check(Unfold().eval(), torch.randn(2, 3, 8, 8))
    assert "reshape([-1, 2, 4, 2])" in r.text


def test_small_torchvision_vit_and_swin_import_and_match():
    """nn.MultiheadAttention mapped whole although torch.export computes the batch's sizes inside it
    (operator.mul on SymInts used outside), and Swin's attention whose input passes through an alias;
    Swin's PatchMerging pads H, W to even sizes with F.pad over [N, H, W, C], a no-op here."""
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5).eval()
    with torch.no_grad():  # torchvision zero-initializes the head: outputs would all be 0
        vit.heads.head.weight.normal_(0, 0.1)
    r = _check(vit, torch.randn(2, 3, 32, 32))
    assert "mhsa(" in r.text and "class_token" in r.text
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2],
                           num_classes=5).eval()
    r = _check(swin, torch.randn(2, 3, 32, 32))
    assert "window_attention(" in r.text


def test_small_torchvision_swin_v2_imports_and_matches():
    """swin_v2's structure, smaller: ShiftedWindowAttentionV2 mapped whole to window_attention(v2=true)
    (its in-place zero_ of the key bias, normalize, clamp/exp of logit_scale and the cpb_mlp on the
    relative_coords_table buffer stay inside), the post-norm blocks and PatchMergingV2 op for op."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2],
                           num_classes=5, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2).eval()
    with torch.no_grad():  # torchvision zeroes the k bias and the head's bias: random values everywhere
        for p in swin.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    r = _check(swin, torch.randn(2, 3, 32, 32))
    assert r.text.count("window_attention(") == 1 and "v2=true" in r.text  # one block, called four times
    assert "relative_coords_table" not in r.text and "zero" not in r.text


def test_addcmul_is_add_and_mul():
    class GRN(torch.nn.Module):  # timm's GlobalResponseNorm (ConvNeXt-V2), channels last
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8))
            self.bias = torch.nn.Parameter(torch.randn(8))

        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            nx = x.norm(p=2, dim=(1, 2), keepdim=True)
            nx = nx / (nx.mean(dim=-1, keepdim=True) + 1e-6)
            return x.addcmul(self.weight.view(1, 1, 1, -1), x * nx) + self.bias.view(1, 1, 1, -1)

    _check(GRN().eval(), torch.randn(2, 8, 4, 4))


class _RelBiasAttention(torch.nn.Module):
    """MaxViT's pieces: einsum attention, a bias table gathered by an integer index buffer, swapaxes."""

    def __init__(self, m: int = 3, heads: int = 2, dim: int = 8):
        super().__init__()
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.table = torch.nn.Parameter(torch.randn((2 * m - 1) ** 2, heads))
        ij = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
        rel = (ij[:, :, None] - ij[:, None, :]).permute(1, 2, 0) + m - 1
        self.register_buffer("index", (rel[..., 0] * (2 * m - 1) + rel[..., 1]).long())
        self.heads, self.n = heads, m * m

    def forward(self, x):  # x: [B, n, dim]
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index.view(-1)].view(self.n, self.n, -1).permute(2, 0, 1)
        a = torch.einsum("b h i d, b h j d -> b h i j", q, k) + bias
        y = torch.einsum("bhij,bhjd->bhid", a.softmax(-1), v)
        return y.swapaxes(1, 2).reshape(b, n, d)


def test_einsum_index_buffer_and_swapaxes():
    torch.manual_seed(0)
    r = _check(_RelBiasAttention().eval(), torch.randn(2, 9, 8))  # the state_dict keys, the buffer's included
    ops = [n.op for n in r.graph.nodes()]
    assert ops.count("take") == 1 and ops.count("matmul") == 2 and "parameter" in ops and "index_select" not in ops
    # the buffer is read as index.view(-1): take holds it as stored ([9, 9]), a reshape makes the view
    assert r.graph.params.specs["index"].shape == (9, 9) and 'take([9, 9], dim=0) as param index' in r.text


def test_einsum_that_is_no_matrix_product_is_a_located_error():
    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.einsum("bii->bi", x)

    with pytest.raises(ModelImportError, match="einsum 'bii->bi'"):
        import_model(Net().eval(), (torch.randn(2, 3, 3),))


def test_a_two_dim_index_buffer_and_reshape_as():
    class Net(torch.nn.Module):  # EfficientFormer's / LeViT's attention biases[:, idxs] with idxs [N, N]
        def __init__(self):
            super().__init__()
            self.biases = torch.nn.Parameter(torch.randn(2, 4))
            pos = torch.arange(4)
            self.register_buffer("idxs", (pos[:, None] - pos[None, :]).abs())

        def forward(self, x):  # x: [B, 2, 4, 4]
            y = x + self.biases[:, self.idxs]
            return y.reshape_as(x).softmax(-1)

    torch.manual_seed(0)
    r = _check(Net().eval(), torch.randn(2, 2, 4, 4))
    assert [n.op for n in r.graph.nodes()].count("take") == 1 and "as param idxs" in r.text


def test_an_index_buffer_read_twice_or_out_of_range_is_written_as_a_list():
    """take holds a buffer under its one key: a second reader, or positions outside [0, size) (which
    index_select counts from the end), get the positions written as index_select lists."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.randn(2, 4))
            self.b = torch.nn.Parameter(torch.randn(2, 4))
            self.register_buffer("idxs", torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))
            self.register_buffer("neg", torch.tensor([-1, 0, -2]))

        def forward(self, x):  # x: [B, 2, 2, 4]
            return x + self.a[:, self.idxs] + self.b[:, self.idxs] + self.a[:, self.neg].mean(-1, keepdim=True)

    torch.manual_seed(0)
    r = _check(Net().eval(), torch.randn(2, 2, 2, 4), literal={"neg"})
    ops = [n.op for n in r.graph.nodes()]
    assert ops.count("take") == 1 and ops.count("index_select") == 2


def test_roll_is_split_and_concat():
    class Net(torch.nn.Module):  # timm Swin's cyclic shift, outside the attention
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):  # x: [B, H, W, C]
            y = torch.roll(self.fc(x), shifts=(-2, -2), dims=(1, 2))
            return torch.roll(y, shifts=3, dims=2)

    torch.manual_seed(0)
    r = _check(Net().eval(), torch.randn(2, 5, 6, 4))
    assert "roll" not in r.text and [n.op for n in r.graph.nodes()].count("concat") == 3


def test_timm_levit_index_buffers_are_take_buffers_under_their_keys():
    """timm LeViT: 11 attention-bias index tables ([N_q, N_k], non-persistent buffers in timm) become
    `take` buffers named by their keys: the program holds no position list, the compiled state_dict is
    the source's plus exactly those buffers (which the source does not save), and the outputs match."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _randomize(timm.create_model("levit_128s", pretrained=False, img_size=64, num_classes=5))
    x = torch.randn(2, 3, 64, 64)
    r = import_model(model, (x,))
    mod = build_module(r.graph)
    idxs = {k for k, _ in model.named_buffers() if k.endswith("attention_bias_idxs")}
    assert len(idxs) == 11 and not idxs & set(model.state_dict())
    assert set(mod.state_dict()) == set(model.state_dict()) | idxs
    for k in idxs:
        assert torch.equal(mod.state_dict()[k], model.get_buffer(k))
    # (LeViT's subsampling x[:, ::2] is an index_select: a slice with a step, 2-8 positions)
    assert "as param attention_bias_idxs" in r.text and max(len(line) for line in r.text.splitlines()) <= 100
    mod.load_state_dict({**model.state_dict(), **{k: model.get_buffer(k) for k in idxs}})
    assert set(model.load_state_dict(mod.state_dict(), strict=False).unexpected_keys) == idxs
    with torch.no_grad():
        a, b = model(x), mod(x)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_timm_efficientformer_keeps_its_persistent_index_buffer_keys():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _randomize(timm.models.efficientformer.EfficientFormer(depths=(1, 1, 1, 2), embed_dims=(8, 16, 24, 32),
                                                                   num_vit=1, num_classes=5))
    assert any(k.endswith("attention_bias_idxs") for k in model.state_dict())
    r = _check(model, torch.randn(2, 3, 224, 224))  # its attention runs at 7 x 7 (224 / 32)
    assert "take(" in r.text and "index_select" not in r.text
