"""Helper modules and functions that generated PyTorch code may need.

Their source is copied verbatim into generated files (see ``codegen.py``), so
every definition here must depend on nothing but ``torch``, ``nn``, ``F``,
``math`` and each other.  Keep them small and readable: users read them.
"""
from __future__ import annotations

import math  # noqa: F401  (available to helpers)

import torch
import torch.nn.functional as F  # noqa: F401
from torch import nn


class Scope(nn.ModuleDict):
    """A named group of submodules (one block instance), so parameter names read
    like ``layer1.0.conv1.weight``."""


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of [N, C, H, W] at each position (as in
    torchvision's ConvNeXt); state_dict: weight, bias of shape [C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GroupNormOneValue(nn.GroupNorm):
    """Group norm where every group holds one value (channels/groups x spatial size = 1): each
    value minus its group's mean is exactly 0, so the output is the bias (0 without affine; NaN
    where the input is not finite).  F.group_norm refuses this shape at batch 1 ("Expected more
    than 1 value per channel when training", even in eval) and rounds it at other batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x - x
        if self.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class Conv3dBf16OnCpu(nn.Conv3d):
    """nn.Conv3d whose bf16 input on CPU is convolved in float32 and rounded back to bf16: the products of
    bf16 values are exact in float32 and summed in float32, as torch's own bf16 conv does.  torch 2.14.1's CPU
    bf16 conv3d returns wrong values for some shapes with one thread (stride 2 to an output of width 1:
    tests/regressions/torch_bf16_conv3d_one_thread.cdl)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu":
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias).to(torch.bfloat16)


def load_safetensors(path: str) -> dict:
    """Minimal reader for the safetensors format (header length, JSON header, raw data)."""
    import json
    import struct

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        if end > start:
            t = torch.frombuffer(bytearray(body[start:end]), dtype=dtype)
        else:
            t = torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out


HELPERS: dict[str, object] = {"Scope": Scope, "LayerNorm2d": LayerNorm2d, "GroupNormOneValue": GroupNormOneValue,
                              "Conv3dBf16OnCpu": Conv3dBf16OnCpu, "load_safetensors": load_safetensors}


# ---- attention (convdsl/ir/ops/attention.py) ---------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with torch.nn.MultiheadAttention's parameters: in_proj_weight [3E, C]
    and in_proj_bias [3E] (q_proj_weight/k_proj_weight/v_proj_weight when query, context and E
    differ), out_proj; or a fused Linear named ``qkv`` [3E, C] and an output Linear named
    ``proj`` (state_dict keys qkv.weight, proj.weight...).  Self-attention when called without a
    context.  Options: causal masking,
    an additive mask [Lq, Lk] or [N*heads, Lq, Lk] (bool: True = blocked, as in
    nn.MultiheadAttention) and a learned 1-D relative position bias table [2*max_len-1, heads]."""

    def __init__(self, channels, heads, dim=None, context=None, qkv_bias=True, proj_bias=True, dropout=0.0,
                 causal=False, max_len=0, scale=None, qkv=None, proj="out_proj"):
        super().__init__()
        dim = dim or channels
        self.heads, self.dropout, self.causal, self.max_len, self.scale = heads, dropout, causal, max_len, scale
        self.packed = context is None or channels == context == dim
        self.qkv_name, self.proj_name = qkv, proj  # a fused q/k/v Linear's name (None: in_proj_weight)
        if qkv is not None:
            setattr(self, qkv, nn.Linear(channels, 3 * dim, bias=qkv_bias))
            nn.init.xavier_uniform_(getattr(self, qkv).weight)
            if qkv_bias:
                nn.init.zeros_(getattr(self, qkv).bias)
        elif self.packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, channels))
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(dim, channels))
            self.k_proj_weight = nn.Parameter(torch.empty(dim, context))
            self.v_proj_weight = nn.Parameter(torch.empty(dim, context))
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if qkv is None:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if qkv_bias else None
        setattr(self, proj, nn.Linear(dim, dim, bias=proj_bias))
        if proj_bias:
            nn.init.zeros_(getattr(self, proj).bias)
        if max_len:
            self.relative_position_bias_table = nn.Parameter(torch.zeros(2 * max_len - 1, heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, context=None, mask=None):
        kv = x if context is None else context
        fused = None if self.qkv_name is None else getattr(self, self.qkv_name)
        if fused is not None:
            wq, wk, wv = fused.weight.chunk(3)
            b = fused.bias
        else:
            wq, wk, wv = self.in_proj_weight.chunk(3) if self.packed else \
                (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
            b = self.in_proj_bias
        bq, bk, bv = (None,) * 3 if b is None else b.chunk(3)
        q, k, v = F.linear(x, wq, bq), F.linear(kv, wk, bk), F.linear(kv, wv, bv)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [N, heads, L, d]
        bias = self.logit_bias(q, k, mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal and bias is None, scale=self.scale)
        return getattr(self, self.proj_name)(y.transpose(1, 2).flatten(2))

    def logit_bias(self, q, k, mask):
        """What is added to the logits [N, heads, Lq, Lk] (broadcast), or None."""
        n, lq, lk = q.shape[0], q.shape[2], k.shape[2]
        bias = None
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
            bias = mask.to(q.dtype) if mask.dim() == 2 else mask.to(q.dtype).view(n, self.heads, lq, lk)
        if self.max_len:
            offset = torch.arange(lq, device=q.device)[:, None] - torch.arange(lk, device=q.device)[None, :]
            rel = self.relative_position_bias_table[offset + self.max_len - 1].permute(2, 0, 1).to(q.dtype)
            bias = rel if bias is None else bias + rel
        if self.causal and bias is not None:
            blocked = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
            bias = bias.masked_fill(blocked, float("-inf"))
        return bias


class WindowAttention(nn.Module):
    """Swin (shifted) window attention on [N, H, W, C]: the function and state_dict of torchvision's
    ShiftedWindowAttention (qkv, proj, relative_position_bias_table; its relative_position_index
    buffer is derived, so it is recomputed here and ignored when loading)."""

    def __init__(self, channels, heads, window, shift=(0, 0), qkv_bias=True, proj_bias=True, dropout=0.0,
                 proj_dropout=0.0, scale=None, qkv="qkv", proj="proj", v2=False):
        super().__init__()
        self.heads, self.window, self.shift = heads, tuple(window), tuple(shift)
        self.dropout, self.proj_dropout, self.scale, self.v2 = dropout, proj_dropout, scale, v2
        self.qkv_name, self.proj_name = qkv, proj  # the projections' module names (state_dict keys)
        setattr(self, qkv, nn.Linear(channels, 3 * channels, bias=qkv_bias))
        setattr(self, proj, nn.Linear(channels, channels, bias=proj_bias))
        wh, ww = self.window
        if v2:  # torchvision's ShiftedWindowAttentionV2: learned logit scale, continuous position bias MLP
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((heads, 1, 1))))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, heads, bias=False))
        else:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        state_dict.pop(prefix + "relative_position_index", None)
        state_dict.pop(prefix + "relative_coords_table", None)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def relative_coords_table(self, device, dtype=torch.float32):
        """[2wh-1, 2ww-1, 2]: V2's log-spaced relative coordinates, the cpb_mlp's input (computed in
        f32, then given the cpb_mlp's dtype: a half-precision cast of the module runs it in f16)."""
        wh, ww = self.window
        h = torch.arange(-(wh - 1), wh, dtype=torch.float32, device=device) / (wh - 1) * 8
        w = torch.arange(-(ww - 1), ww, dtype=torch.float32, device=device) / (ww - 1) * 8
        t = torch.stack(torch.meshgrid(h, w, indexing="ij"), dim=-1)
        return (torch.sign(t) * torch.log2(torch.abs(t) + 1.0) / 3.0).to(dtype)

    def relative_position_bias(self):
        """[heads, T, T] (T = wh*ww): the table entry for each pair's 2-D offset (V2: the table is
        cpb_mlp of the coordinates, and the bias 16 sigmoid of its entry)."""
        wh, ww = self.window
        if self.v2:
            dev = self.logit_scale.device
            coords = self.relative_coords_table(dev, self.cpb_mlp[0].weight.dtype)
            table = self.cpb_mlp(coords).view(-1, self.heads)
        else:
            table = self.relative_position_bias_table
            dev = table.device
        ys, xs = torch.meshgrid(torch.arange(wh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + xs[:, None] - xs[None, :] + ww - 1
        bias = table[index].permute(2, 0, 1)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def shift_mask(self, hp, wp, sh, sw, device):
        """[windows, T, T]: -100 between tokens the cyclic shift brought together from different regions."""
        wh, ww = self.window
        region = torch.zeros(hp, wp, device=device)
        count = 0
        for h in ((0, -wh), (-wh, -sh), (-sh, None)):
            for w in ((0, -ww), (-ww, -sw), (-sw, None)):
                region[h[0]:h[1], w[0]:w[1]] = count
                count += 1
        region = region.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
        diff = region.unsqueeze(1) - region.unsqueeze(2)
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x):
        n, h, w, c = x.shape
        wh, ww = self.window
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))  # pad bottom/right to whole windows
        hp, wp = x.shape[1], x.shape[2]
        sh = self.shift[0] if wh < hp else 0  # no shift along a side one window covers
        sw = self.shift[1] if ww < wp else 0
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        x = x.view(n, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, wh * ww, c)
        lin = getattr(self, self.qkv_name)
        if self.v2 and lin.bias is not None:  # V2 leaves the key's bias out (torchvision zeroes it)
            c3 = lin.bias.numel() // 3
            keep = torch.ones_like(lin.bias)
            keep[c3:2 * c3] = 0
            qkv = F.linear(x, lin.weight, lin.bias * keep)
        else:
            qkv = lin(x)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(3, 0, 1, 4, 2, 5)  # [N, windows, heads, T, d]
        bias = self.relative_position_bias()
        if sh or sw:
            bias = bias + self.shift_mask(hp, wp, sh, sw, x.device).unsqueeze(1)  # [windows, heads, T, T]
        scale = self.scale
        if self.v2:  # cosine attention: unit q and k, logits times exp(min(logit_scale, log 100)) per head
            eps = max(1e-12, torch.finfo(q.dtype).tiny)  # torchvision's 1e-12 is 0 in f16: a zero key gives 0/0
            q, k = F.normalize(q, dim=-1, eps=eps), F.normalize(k, dim=-1, eps=eps)
            q = q * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
            scale = 1.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.dropout if self.training else 0.0, scale=scale)
        y = F.dropout(getattr(self, self.proj_name)(y.transpose(2, 3).flatten(3)), self.proj_dropout, self.training)
        y = y.view(n, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, c)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        return y[:, :h, :w, :].contiguous()


class ConvAttention(nn.Module):
    """CvT attention on a token map [N, C, H, W]: q, k, v each from a depthwise conv + BN
    (conv_proj_q/k/v, keys and values strided) and a linear map (proj_q/k/v), multi-head
    attention, output projection (proj); returns [N, C, H', W'] at the queries' resolution."""

    def __init__(self, channels, heads, k=3, stride_kv=2, stride_q=1, qkv_bias=True, proj_bias=True, dropout=0.0,
                 scale=None):
        super().__init__()
        self.heads, self.dropout, self.scale = heads, dropout, scale
        self.conv_proj_q = self.dw_bn(channels, k, stride_q)
        self.conv_proj_k = self.dw_bn(channels, k, stride_kv)
        self.conv_proj_v = self.dw_bn(channels, k, stride_kv)
        self.proj_q = nn.Linear(channels, channels, bias=qkv_bias)
        self.proj_k = nn.Linear(channels, channels, bias=qkv_bias)
        self.proj_v = nn.Linear(channels, channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels, bias=proj_bias)

    @staticmethod
    def dw_bn(c, k, stride):
        m = nn.Sequential()
        m.add_module("conv", nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False))
        m.add_module("bn", nn.BatchNorm2d(c))
        return m

    def forward(self, x):
        q = self.conv_proj_q(x)
        h, w = q.shape[2], q.shape[3]
        q = self.proj_q(q.flatten(2).transpose(1, 2))  # [N, H'W', C]
        k = self.proj_k(self.conv_proj_k(x).flatten(2).transpose(1, 2))
        v = self.proj_v(self.conv_proj_v(x).flatten(2).transpose(1, 2))
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        y = self.proj(y.transpose(1, 2).flatten(2))
        return y.transpose(1, 2).unflatten(2, (h, w))


class HaloAttention(nn.Module):
    """HaloNet blocked local attention on [N, C, H, W] (the state_dict of timm's HaloAttn): queries in
    block x block tiles attend to the (block + 2*halo)^2 window around their tile, keys and values
    zero-padded at the border; logits q.k * scale (default 1/sqrt(d)) + q.height_rel[ky - qy + win - 1] + q.width_rel[kx - qx + win - 1]
    (coordinates within the tile and the window).  kv channels are per head [k | v]."""

    def __init__(self, channels, heads, block, halo, dim=None, qkv_bias=False, scale=None):
        super().__init__()
        dim = dim or channels
        self.heads, self.block, self.halo, self.scale = heads, block, halo, scale
        self.q = nn.Conv2d(channels, dim, 1, bias=qkv_bias)
        self.kv = nn.Conv2d(channels, 2 * dim, 1, bias=qkv_bias)
        win = block + 2 * halo
        self.pos_embed = nn.Module()
        self.pos_embed.height_rel = nn.Parameter(torch.randn(2 * win - 1, dim // heads) * (dim // heads) ** -0.5)
        self.pos_embed.width_rel = nn.Parameter(torch.randn(2 * win - 1, dim // heads) * (dim // heads) ** -0.5)

    def forward(self, x):
        n, _, h, w = x.shape
        b, win, heads = self.block, self.block + 2 * self.halo, self.heads
        nh, nw = h // b, w // b
        q = self.q(x)
        d = q.shape[1] // heads
        q = q.view(n, heads, d, nh, b, nw, b).permute(0, 1, 3, 5, 4, 6, 2).reshape(n, heads, nh * nw, b * b, d)
        kv = F.pad(self.kv(x), [self.halo] * 4).unfold(2, win, b).unfold(3, win, b)  # [N, 2*dim, nh, nw, win, win]
        k, v = kv.reshape(n, heads, 2 * d, nh * nw, win * win).permute(0, 1, 3, 4, 2).split(d, dim=-1)
        offset = torch.arange(win, device=x.device)[None, :] - torch.arange(b, device=x.device)[:, None] + win - 1
        qb = q.view(n, heads, nh * nw, b, b, d)
        rel_h = torch.einsum("...yxd,ykd->...yxk", qb, self.pos_embed.height_rel[offset])  # [..., qy, qx, ky]
        rel_w = torch.einsum("...yxd,xkd->...yxk", qb, self.pos_embed.width_rel[offset])  # [..., qy, qx, kx]
        rel = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(n, heads, nh * nw, b * b, win * win)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=rel, scale=self.scale)  # [N, heads, blocks, b*b, d]
        return y.view(n, heads, nh, nw, b, b, d).permute(0, 1, 6, 2, 4, 3, 5).reshape(n, heads * d, h, w)


class PatchEmbed(nn.Conv2d):
    """Image [N, C, H, W] -> tokens [N, (H/p)*(W/p), dim]: a conv with kernel = stride = patch
    (state_dict weight, bias: torchvision ViT's conv_proj)."""

    def forward(self, x):
        return super().forward(x).flatten(2).transpose(1, 2)


class ClassToken(nn.Module):
    """Prepends a learned token (class_token [1, tokens, C]) to each sequence [N, L, C]."""

    def __init__(self, channels, tokens=1):
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, tokens, channels))

    def forward(self, x):
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    """Adds positions to tokens [N, L, C]: a learned table pos_embedding [1, L, C] when built with a
    length, else the fixed table of 'Attention Is All You Need' (sin on even, cos on odd channels)."""

    def __init__(self, channels, length=None, std=0.02):
        super().__init__()
        self.pos_embedding = None
        if length is not None:
            self.pos_embedding = nn.Parameter(torch.empty(1, length, channels).normal_(std=std))

    def forward(self, x):
        if self.pos_embedding is not None:
            return x + self.pos_embedding
        length, c = x.shape[-2], x.shape[-1]
        pos = torch.arange(length, device=x.device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, c, 2, device=x.device, dtype=torch.float32) * (-math.log(10000.0) / c))
        table = torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1).flatten(1)  # interleaved
        return x + table.to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel learned scale: x * layer_scale ([C], or [C, 1, 1] channels-first as in ConvNeXt)."""

    def __init__(self, shape, init=1e-6):
        super().__init__()
        self.layer_scale = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, x):
        return x * self.layer_scale


class DropPath(nn.Module):
    """Stochastic depth as torchvision.ops.StochasticDepth: while training, zero whole samples
    (mode row) or the whole batch (batch) with probability p, scaling survivors by 1/(1-p)."""

    def __init__(self, p, mode="row"):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode}"


HELPERS.update({"Attention": Attention, "WindowAttention": WindowAttention, "ConvAttention": ConvAttention,
                "HaloAttention": HaloAttention,
                "PatchEmbed": PatchEmbed, "ClassToken": ClassToken, "PositionEmbedding": PositionEmbedding,
                "LayerScale": LayerScale, "DropPath": DropPath})


# ---- FFT mixing and state-space helpers (ops in convdsl/ir/ops/fft.py, ssm.py) ------------
def fast_fft_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT of a size with a large prime factor is several times
    slower (4103 = 11 * 373 took 7 ms where 5120 = 2^10 * 5 took 1.2 ms, 64 channels)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_long_conv(u: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Convolve each channel of u[..., C, L] with its own kernel k[C, K] by FFT.

    Both are zero-padded to at least L + K, so nothing wraps around (FlashFFTConv pads to 2L).
    causal: y[t] = sum_j k[j] u[t-j]; otherwise the kernel is centered:
    y[t] = sum_j k[j] u[t - j + K//2].  Computed in float32 (float64 stays float64).
    """
    L, K = u.shape[-1], k.shape[-1]
    n = fast_fft_len(L + K)  # any n >= L + K - 1 gives the same result; 5-smooth sizes are fast
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    u_f = torch.fft.rfft(u.to(work), n=n)
    k_f = torch.fft.rfft(k.to(work), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n)
    start = 0 if causal else K // 2
    return y[..., start:start + L].to(u.dtype)


class GlobalFilter2d(nn.Module):
    """GFNet global filter: y = irfft2(rfft2(x) * W, s=(H, W)), both norm="ortho", with one learned
    complex weight per channel and frequency (a circular convolution of each channel).
    state_dict: complex_weight [C, H, W//2+1, 2] (real, imaginary)."""

    def __init__(self, channels: int, h: int, w: int, channels_last: bool = False):
        super().__init__()
        self.size = (h, w)
        self.channels_last = channels_last
        self.complex_weight = nn.Parameter(torch.empty(channels, h, w // 2 + 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        spectrum = torch.fft.rfft2(x.to(work), norm="ortho")
        cw = self.complex_weight.to(work)  # torch has no bf16 complex: half weights join in the work dtype
        weight = torch.complex(cw[..., 0], cw[..., 1])
        y = torch.fft.irfft2(spectrum * weight, s=self.size, norm="ortho").to(x.dtype)
        return y.permute(0, 2, 3, 1) if self.channels_last else y


class AdaptiveFilter2d(nn.Module):
    """AFFNet adaptive frequency filter (token mixer).  X = rfft2(x, norm="ortho"); a complex MLP
    over channels at each frequency, block-diagonal in `blocks` groups, turns X into a filter
    M = softshrink(W2 lrelu(W1 X + b1) + b2) (leaky ReLU and soft-shrink act on the real and
    imaginary parts separately); y = irfft2(M * X, norm="ortho") (+ x if residual).
    state_dict: w1 [2, blocks, C/blocks, hid], b1 [2, blocks, hid], w2 [2, blocks, hid, C/blocks],
    b2 [2, blocks, C/blocks]; index 0 is the real part, 1 the imaginary part."""

    def __init__(self, channels: int, blocks: int = 8, hidden_factor: int = 1, sparsity: float = 0.01,
                 slope: float = 0.1, residual: bool = True, channels_last: bool = False):
        super().__init__()
        size = channels // blocks
        hidden = size * hidden_factor
        self.blocks, self.sparsity, self.slope = blocks, sparsity, slope
        self.residual, self.channels_last = residual, channels_last
        self.w1 = nn.Parameter(torch.empty(2, blocks, size, hidden))
        self.b1 = nn.Parameter(torch.empty(2, blocks, hidden))
        self.w2 = nn.Parameter(torch.empty(2, blocks, hidden, size))
        self.b2 = nn.Parameter(torch.empty(2, blocks, size))

    @staticmethod
    def _split_complex(fn, z: torch.Tensor) -> torch.Tensor:
        return torch.complex(fn(z.real), fn(z.imag))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        n, c, h, w = x.shape
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        spectrum = torch.fft.rfft2(x.to(work), norm="ortho")                # [n, c, h, w//2+1]
        z = spectrum.reshape(n, self.blocks, c // self.blocks, h, -1)      # [n, blocks, c/blocks, h, f]
        p = [t.to(work) for t in (self.w1, self.b1, self.w2, self.b2)]  # torch has no bf16 complex
        w1, b1 = torch.complex(p[0][0], p[0][1]), torch.complex(p[1][0], p[1][1])
        w2, b2 = torch.complex(p[2][0], p[2][1]), torch.complex(p[3][0], p[3][1])
        z = torch.einsum("bkihw,kio->bkohw", z, w1.to(z.dtype)) + b1.to(z.dtype)[..., None, None]
        z = self._split_complex(lambda t: F.leaky_relu(t, self.slope), z)
        z = torch.einsum("bkihw,kio->bkohw", z, w2.to(z.dtype)) + b2.to(z.dtype)[..., None, None]
        mask = self._split_complex(lambda t: F.softshrink(t, self.sparsity), z).reshape(spectrum.shape)
        y = torch.fft.irfft2(mask * spectrum, s=(h, w), norm="ortho").to(x.dtype)
        if self.residual:
            y = y + x
        return y.permute(0, 2, 3, 1) if self.channels_last else y


class LongConv1d(nn.Module):
    """FFT long convolution of u[N, C, L] with a learned kernel per channel (see fft_long_conv),
    + bias, + D * u.  state_dict: kernel [C, K], bias [C] (if bias), D [C] (if skip)."""

    def __init__(self, channels: int, kernel_len: int, causal: bool = True, bias: bool = True, skip: bool = False):
        super().__init__()
        self.causal = causal
        self.kernel = nn.Parameter(torch.empty(channels, kernel_len))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.D = nn.Parameter(torch.empty(channels)) if skip else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = fft_long_conv(u, self.kernel, self.causal)
        if self.bias is not None:
            y = y + self.bias[:, None]
        if self.D is not None:
            y = y + self.D[:, None] * u
        return y


def cached_kernel(module: nn.Module, length: int, compute) -> torch.Tensor:
    """compute(length), a kernel made from the module's own parameters, reused at inference.

    Recomputed whenever gradients may flow (training, autograd, export tracing) or torch.compile
    is tracing; otherwise kept until the length or a parameter changes (a new tensor or an
    in-place update: its version counter; writes through ``.data`` are not seen)."""
    params = tuple(module.parameters(recurse=False))
    if (torch.is_grad_enabled() and any(p.requires_grad for p in params)) or torch.compiler.is_compiling():
        return compute(length)
    key = (length, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
    hit = module.__dict__.get("_kernel_cache")
    if hit is not None and hit[0] == key:
        return hit[1]
    k = compute(length)
    module.__dict__["_kernel_cache"] = (key, k)
    return k


class S4D(nn.Module):
    """S4D diagonal state-space layer, one SSM per channel of u[N, C, L].

    Continuous: x' = A x + B u, y = 2 Re(C x) + D u, with state/2 complex modes
    A = -exp(log_A_real) + i A_imag and B = 1.  Zero-order hold with dt = exp(log_dt):
    dA = exp(dt A), dB = (dA - 1) / A.  forward() convolves with the kernel
    K[l] = 2 Re(sum_n C_n dB_n dA_n^l) by FFT; recurrent() steps through time, same result.
    state_dict: log_A_real, A_imag [C, state/2], C [C, state/2, 2], D [C], log_dt [C]."""

    def __init__(self, channels: int, state: int = 64, bidirectional: bool = False):
        super().__init__()
        modes = state // 2
        self.bidirectional = bidirectional
        self.log_A_real = nn.Parameter(torch.empty(channels, modes))
        self.A_imag = nn.Parameter(torch.empty(channels, modes))
        self.C = nn.Parameter(torch.empty(channels, modes, 2))
        self.D = nn.Parameter(torch.empty(channels))
        self.log_dt = nn.Parameter(torch.empty(channels))

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dA, dB, C), complex [C, state/2] each."""
        dt = torch.exp(self.log_dt)[:, None]
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dA = torch.exp(dt * A)
        return dA, (dA - 1) / A, torch.complex(self.C[..., 0], self.C[..., 1])

    def kernel(self, length: int) -> torch.Tensor:
        """K[c, l] = 2 Re(sum_n C_n dB_n dA_n^l) for l < length: [C, length], computed in f32 (f64
        for f64 parameters; torch has no bf16 complex numbers) and returned in the parameters' dtype."""
        work = torch.float64 if self.log_dt.dtype == torch.float64 else torch.float32
        log_dt, log_A_real, A_imag, Cw = (t.to(work) for t in (self.log_dt, self.log_A_real, self.A_imag, self.C))
        dt = torch.exp(log_dt)[:, None]
        A = torch.complex(-torch.exp(log_A_real), A_imag)
        C = torch.complex(Cw[..., 0], Cw[..., 1]) * (torch.exp(dt * A) - 1) / A
        pieces = []
        for start in range(0, length, 2048):  # Vandermonde [C, N/2, 2048] at a time: memory stays O(C N)
            steps = torch.arange(start, min(length, start + 2048), device=A.device, dtype=dt.dtype)
            powers = torch.exp((dt * A)[..., None] * steps)
            pieces.append(2 * torch.einsum("cn,cnl->cl", C, powers).real)
        return torch.cat(pieces, dim=-1).to(self.log_dt.dtype)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        k = cached_kernel(self, u.shape[-1], self.kernel)
        y = fft_long_conv(u, k) + self.D[:, None] * u
        if self.bidirectional:  # the same SSM run backwards in time
            back = u.flip(-1)
            y = y + (fft_long_conv(back, k) + self.D[:, None] * back).flip(-1)
        return y

    def recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """forward() step by step: h_l = dA h_{l-1} + dB u_l, y_l = 2 Re(C . h_l) + D u_l."""
        y = self._scan(u)
        if self.bidirectional:
            y = y + self._scan(u.flip(-1)).flip(-1)
        return y

    def _scan(self, u: torch.Tensor) -> torch.Tensor:
        dA, dB, C = self.discretize()
        h = torch.zeros(*u.shape[:-1], dA.shape[-1], dtype=dA.dtype, device=u.device)
        ys = []
        for t in range(u.shape[-1]):
            h = dA * h + dB * u[..., t, None]
            ys.append(2 * (C * h).sum(-1).real + self.D * u[..., t])
        return torch.stack(ys, -1).to(u.dtype)


class SGConv(nn.Module):
    """SGConv structured global convolution: sub-kernel i (kernel[i], d taps) is upsampled by
    2**max(0, i-1) and weighted by decay**i; the pieces concatenated (d * 2**(S-1) taps) are
    divided by their L2 norm per channel, cut or zero-padded to L, and applied as a causal FFT
    convolution, + D u.  state_dict: kernel [S, C, d], D [C]."""

    def __init__(self, channels: int, kernel_dim: int, n_scales: int, decay: float = 0.5,
                 interp: str = "linear", bidirectional: bool = False):
        super().__init__()
        self.decay, self.interp, self.bidirectional = decay, interp, bidirectional
        self.kernel = nn.Parameter(torch.empty(n_scales, channels, kernel_dim))
        self.D = nn.Parameter(torch.empty(channels))

    def full_kernel(self) -> torch.Tensor:
        """The concatenated multi-scale kernel with unit norm per channel: [C, d * 2**(S-1)]."""
        pieces = []
        for i in range(self.kernel.shape[0]):
            piece = self.kernel[i]
            if i > 1:
                piece = F.interpolate(piece[None], scale_factor=2 ** (i - 1), mode=self.interp)[0]
            pieces.append(piece * self.decay ** i)
        k = torch.cat(pieces, dim=-1)
        return k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def kernel_for(self, length: int) -> torch.Tensor:
        """full_kernel() cut or zero-padded to `length` taps: [C, length]."""
        k = self.full_kernel()
        if k.shape[-1] >= length:
            return k[..., :length]
        return F.pad(k, (0, length - k.shape[-1]))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        k = cached_kernel(self, u.shape[-1], self.kernel_for)
        y = fft_long_conv(u, k) + self.D[:, None] * u
        if self.bidirectional:  # the same filter run backwards in time
            back = u.flip(-1)
            y = y + (fft_long_conv(back, k) + self.D[:, None] * back).flip(-1)
        return y


class SelectiveScan(nn.Module):
    """Mamba's selective SSM on u[N, C, L] (no gate, no in/out projection):
    u = silu(causal depthwise conv(u)) if d_conv; (dt_low, B, C) = x_proj(u) per step;
    dt = softplus(dt_proj(dt_low)); A = -exp(A_log);
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = C_t . h_t + D u_t.
    forward() scans chunk-parallel (scan_chunked); recurrent() one step at a time (scan_steps).
    state_dict: [conv1d.weight, conv1d.bias,] x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D."""

    def __init__(self, channels: int, state: int = 16, dt_rank: int = 1, d_conv: int = 0,
                 bidirectional: bool = False, chunk: int | None = None):
        super().__init__()
        self.state, self.dt_rank, self.bidirectional, self.chunk = state, dt_rank, bidirectional, chunk
        self.conv1d = nn.Conv1d(channels, channels, d_conv, padding=d_conv - 1, groups=channels) if d_conv else None
        self.x_proj = nn.Linear(channels, dt_rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, channels)
        self.A_log = nn.Parameter(torch.empty(channels, state))
        self.D = nn.Parameter(torch.empty(channels))

    def scan_inputs(self, u: torch.Tensor):
        """(u, dt, A, B, C): u and dt [N, C, L], A [C, state], B and C [N, L, state]."""
        if self.conv1d is not None:
            u = F.silu(self.conv1d(u)[..., :u.shape[-1]])  # causal: drop the right padding
        dt_low, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.state, self.state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low)).transpose(1, 2)
        return u, dt, -torch.exp(self.A_log), B, C

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = self._one_way(u, steps=False)
        if self.bidirectional:  # the same SSM run backwards in time
            y = y + self._one_way(u.flip(-1), steps=False).flip(-1)
        return y

    def recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """forward() computed one time step at a time."""
        y = self._one_way(u, steps=True)
        if self.bidirectional:
            y = y + self._one_way(u.flip(-1), steps=True).flip(-1)
        return y

    def _one_way(self, u: torch.Tensor, steps: bool) -> torch.Tensor:
        u, dt, A, B, C = self.scan_inputs(u)
        y = self.scan_steps(u, dt, A, B, C) if steps else self.scan_chunked(u, dt, A, B, C, self.chunk)
        return y + self.D[:, None] * u

    @staticmethod
    def scan_steps(u, dt, A, B, C) -> torch.Tensor:
        """y_t = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, one step at a time."""
        h = u.new_zeros(*u.shape[:2], A.shape[-1])                           # [N, C, state]
        ys = []
        for t in range(u.shape[-1]):
            dA = torch.exp(dt[..., t, None] * A)
            h = dA * h + (dt[..., t] * u[..., t])[..., None] * B[:, None, t]
            ys.append((h * C[:, None, t]).sum(-1))
        return torch.stack(ys, dim=-1)

    @staticmethod
    def scan_chunked(u, dt, A, B, C, chunk: int | None = None, block: int | None = None) -> torch.Tensor:
        """scan_steps() computed chunk-parallel.  The tokens are cut into chunks of `chunk`; all chunks of a block run
        the recurrence from a zero state together, one torch op per time step over rows [N, chunks, state, C]:
            hloc_t = a_t hloc_{t-1} + dt_t u_t B_t,   E_t = a_t E_{t-1}   (a_t = exp(dt_t A), one exp2 per element)
        The chunk-start states then follow from the chunk ends, one small op per chunk (h_next = E_T h + hloc_T),
        and h_t = hloc_t + E_t h_start;  y_t = C_t . h_t.  Every exponent is dt A <= 0, so no decay can overflow and
        no [chunk, chunk] decay matrix is made.  `block` tokens at a time (multiple of `chunk`): the two work buffers
        [chunk, N, block/chunk, state, C] are reused across blocks, stay in cache and keep memory linear in L.
        chunk/block None: chosen from (N, C, state, L) by scan_sizes()."""
        n, c, length = u.shape
        s = A.shape[-1]
        chunk, block = SelectiveScan.scan_sizes(n, c, s, length, chunk, block)
        A2 = (A * math.log2(math.e)).t().contiguous()                          # [state, C]: exp(dt A) = exp2(dt A2)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, dt, A, B, C))
        if not grad:  # inference: two buffers reused by every block, every pass in place (fresh tensors cost page faults)
            tokens = min(block, -(-length // chunk) * chunk)
            work_a, work_b = u.new_empty(tokens * n * s * c), u.new_empty(tokens * n * s * c)
        h = u.new_zeros(n, s, c)
        y, parts = u.new_empty(n, c, length), []
        for start in range(0, length, block):
            stop = min(length, start + block)
            nc = -(-(stop - start) // chunk)                                   # chunks in this block

            def tokens_first(t: torch.Tensor) -> torch.Tensor:  # [N, tokens, W] -> [chunk, N, chunks, W]
                pad = nc * chunk - (stop - start)
                t = F.pad(t, (0, 0, 0, pad)) if pad else t
                return t.reshape(n, nc, chunk, t.shape[-1]).permute(2, 0, 1, 3).contiguous()

            dts = tokens_first(dt[..., start:stop].transpose(1, 2))[..., None, :]       # [T, N, chunks, 1, C]
            xs = dts * tokens_first(u[..., start:stop].transpose(1, 2))[..., None, :]   # dt_t u_t
            Bs, Cs = tokens_first(B[:, start:stop])[..., None], tokens_first(C[:, start:stop])[..., None]
            shape = (chunk, n, nc, s, c)
            if grad:  # autograd: no in-place ops
                a, b = torch.exp2(dts * A2), xs * Bs
                hs, es = [b[0]], [a[0]]
                for t in range(1, chunk):
                    hs.append(torch.addcmul(b[t], a[t], hs[-1]))
                    es.append(a[t] * es[-1])
                b, a = torch.stack(hs), torch.stack(es)
            else:
                size = math.prod(shape)
                a = torch.mul(dts, A2, out=work_a[:size].view(shape)).exp2_()  # a_t
                b = torch.mul(xs, Bs, out=work_b[:size].view(shape))           # dt_t u_t B_t
                rows_a, rows_b = a.unbind(0), b.unbind(0)
                for t in range(1, chunk):                                     # all chunks of the block, one step
                    rows_b[t].addcmul_(rows_a[t], rows_b[t - 1])              # hloc_t
                    rows_a[t].mul_(rows_a[t - 1])                             # E_t
            starts = [h]
            for end_b, end_a in zip(b[-1].unbind(1), a[-1].unbind(1)):       # chunk boundaries, in order
                h = torch.addcmul(end_b, end_a, h)
                starts.append(h)
            H0 = torch.stack(starts[:-1], 1)                                  # [N, chunks, state, C]
            if grad:
                part = ((b + a * H0) * Cs).sum(3)
            else:
                part = b.addcmul_(a, H0).mul_(Cs).sum(3)                      # C_t . (hloc_t + E_t h_start)
            part = part.permute(1, 3, 2, 0).reshape(n, c, nc * chunk)         # [T, N, chunks, C] -> [N, C, tokens]
            if grad:
                parts.append(part[..., :stop - start])
            else:
                y[..., start:stop] = part[..., :stop - start]
        return torch.cat(parts, -1) if grad else y

    @staticmethod
    def scan_sizes(n: int, c: int, s: int, length: int, chunk: int | None, block: int | None) -> tuple[int, int]:
        """(chunk, block) for scan_chunked: a block's work buffer [block, N, state, C] about 4 MiB of float32
        (cache-sized), chunk about sqrt(block) (per block: 2 ops per step of a chunk, 1 per chunk boundary)."""
        if block is None:
            block = max(1, min(length, (1 << 20) // max(1, n * s * c)))
        if chunk is None:
            chunk = 1 << max(0, round(math.log2(max(1, block)) / 2))
        chunk = max(1, min(chunk, length))
        return chunk, max(chunk, block // chunk * chunk)


HELPERS.update({"fft_long_conv": fft_long_conv, "fast_fft_len": fast_fft_len, "GlobalFilter2d": GlobalFilter2d,
                "AdaptiveFilter2d": AdaptiveFilter2d, "LongConv1d": LongConv1d, "S4D": S4D, "cached_kernel": cached_kernel,
                "SGConv": SGConv, "SelectiveScan": SelectiveScan})
