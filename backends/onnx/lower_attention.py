"""ONNX exports of the attention ops (see export.py for the entry format).

Every variant reduces to ``attend``: logits = q k^T * scale (+ a bias),
Softmax, times v, as batched MatMuls, the form ONNX Runtime's and OpenVINO's
attention fusions recognize.  Whatever depends only on weights or shapes is
computed here with NumPy, as the TVM backend does: relative position biases
gathered from their tables, Swin's shifted-window mask, sinusoidal tables.  Halo
attention's relative position tables are initializers gathered by nodes (every row
in the file, so ``convdsl import`` can bring the op back).
The batch stays symbolic: reshapes keep it with ONNX's 0.
"""
from __future__ import annotations

import math

import numpy as np

from convdsl.ir.ops.attention import (mha_names, packed_cross, relative_coords_table, relative_position_index,
                                      shift_mask)
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.onnx.common import family, linear
from convdsl.backends.onnx.export import Exporter


def _static(cx: Exporter, t: TensorType, *axes: int) -> tuple[int, ...]:
    out = []
    for a in axes:
        d = t.shape[a]
        if not isinstance(d, int):
            raise cx.error(f"needs a static size in dim {a} of {t}", hint="bind the symbol when exporting (--bind)")
        out.append(d)
    return tuple(out)


def attend(cx: Exporter, q: str, k: str, v: str, rank: int, scale: float, bias: str | None = None) -> str:
    """softmax(q k^T * scale + bias) v over the last two dims (batched)."""
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    logits = cx.op("MatMul", [q, cx.op("Transpose", [k], perm=perm)])
    logits = cx.op("Mul", [logits, cx.const(np.float32(scale))])
    if bias is not None:
        logits = cx.op("Add", [logits, bias])
    return cx.op("MatMul", [cx.op("Softmax", [logits], axis=-1), v])


def heads_first(cx: Exporter, x: str, heads: int, d: int) -> str:
    """[N, L, heads*d] -> [N, heads, L, d]."""
    return cx.op("Transpose", [cx.op("Reshape", [x, cx.ints([0, 0, heads, d])])], perm=[0, 2, 1, 3])


def heads_last(cx: Exporter, y: str, dim: int) -> str:
    """[N, heads, L, d] -> [N, L, heads*d]."""
    return cx.op("Reshape", [cx.op("Transpose", [y], perm=[0, 2, 1, 3]), cx.ints([0, 0, dim])])


def _opt(cx: Exporter, name: str) -> str | None:
    return cx.param(name) if cx.has_param(name) else None


def _rows(cx: Exporter, name: str, i: int, parts: int = 3) -> str | None:
    """Rows i of ``parts`` equal blocks of a packed parameter (in_proj_weight / in_proj_bias)."""
    if not cx.has_param(name):
        return None
    return cx.param(name, lambda a: np.split(a, parts, axis=0)[i], "." + "qkv"[i])


def _mask_bias(cx: Exporter, mask: str, t: TensorType, heads: int) -> str:
    """An input mask -> additive bias broadcastable to [N, heads, Lq, Lk] (bool: True = blocked)."""
    if t.dtype == "bool":
        mask = cx.op("Where", [mask, cx.const(np.float32(-np.inf)), cx.const(np.float32(0.0))])
    if t.rank == 3:  # [N*heads, Lq, Lk]
        mask = cx.op("Reshape", [mask, cx.ints([-1, heads, 0, 0])])
    return mask


def rel_bias(table: np.ndarray, lq: int, lk: int, max_len: int) -> np.ndarray:
    """table[i - j + max_len - 1, h] -> [heads, Lq, Lk]."""
    offset = np.arange(lq)[:, None] - np.arange(lk)[None, :] + max_len - 1
    return np.ascontiguousarray(table[offset].transpose(2, 0, 1))


def mha(cx: Exporter, xq: str, tq: TensorType, xkv: str, tkv: TensorType, w: tuple, b: tuple, wo: str,
        bo: str | None, heads: int, dim: int, scale: float | None, bias: str | None = None) -> str:
    """Multi-head attention of queries xq [N, Lq, C] over xkv [N, Lk, Ck] -> [N, Lq, dim]."""
    d = dim // heads
    q = heads_first(cx, linear(cx, xq, tq, w[0], b[0]), heads, d)
    k = heads_first(cx, linear(cx, xkv, tkv, w[1], b[1]), heads, d)
    v = heads_first(cx, linear(cx, xkv, tkv, w[2], b[2]), heads, d)
    y = attend(cx, q, k, v, 4, scale if scale is not None else 1.0 / math.sqrt(d), bias)
    return linear(cx, heads_last(cx, y, dim), tq.with_shape(tq.shape[:2] + (dim,)), wo, bo)


def _mhsa(cx, node, args, ins):
    a = node.attrs
    heads = a["heads"]
    bias = _mask_bias(cx, args[1], ins[1], heads) if len(args) > 1 else None
    extra = None
    if a["rel_pos"] or a["mask"] == "causal":
        length, = _static(cx, ins[0], 1)
        extra = np.zeros((length, length))
        if a["rel_pos"]:
            extra = extra + rel_bias(cx.array("relative_position_bias_table"), length, length, a["max_len"])
        if a["mask"] == "causal":  # -inf above the diagonal (top-left aligned, as is_causal)
            extra = extra + np.triu(np.full((length, length), -np.inf), 1)
        extra = cx.const(extra)
    if extra is not None:
        bias = extra if bias is None else cx.op("Add", [bias, extra])
    names = mha_names(a)
    w = tuple(_rows(cx, names.w, i) for i in range(3))
    b = tuple(_rows(cx, names.b, i) for i in range(3))
    return mha(cx, args[0], ins[0], args[0], ins[0], w, b, cx.param(names.out_w), _opt(cx, names.out_b),
               heads, a["dim"], a["scale"], bias)


def split_qkv(cx: Exporter, x: str, heads: int, width: int) -> tuple[str, str, str]:
    """Tokens [N, L, 3C] holding q | k | v -> q, k, v as [N, heads, L, C / heads] each."""
    parts = cx.op("Split", [x, cx.ints([width] * 3)], outputs=3, axis=2)
    return tuple(heads_first(cx, p, heads, width // heads) for p in parts)


def _packed_attention(cx, node, args, ins):
    """mhsa between its projections: split q | k | v, attend per head, merge the heads."""
    a = node.attrs
    width = ins[0].shape[2] // 3
    q, k, v = split_qkv(cx, args[0], a["heads"], width)
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(width // a["heads"])
    return heads_last(cx, attend(cx, q, k, v, 4, scale), width)


def _cross_attention(cx, node, args, ins):
    a = node.attrs
    c, ck = ins[0].shape[2], ins[1].shape[2]
    names = mha_names(a, packed_cross(c, ck, a["dim"]))
    if names.w is not None:
        w = tuple(_rows(cx, names.w, i) for i in range(3))
    else:
        w = (cx.param(names.q), cx.param(names.k), cx.param(names.v))
    b = tuple(_rows(cx, names.b, i) for i in range(3))
    bias = _mask_bias(cx, args[2], ins[2], a["heads"]) if len(args) > 2 else None
    return mha(cx, args[0], ins[0], args[1], ins[1], w, b, cx.param(names.out_w), _opt(cx, names.out_b),
               a["heads"], a["dim"], a["scale"], bias)


# ---- Swin window attention ---------------------------------------------------------------------
def roll(cx: Exporter, x: str, size: int, axis: int, shift: int) -> str:
    """torch.roll(x, shift, axis) as torch.onnx writes it: Concat(x[a:], x[:a]) along the axis, a = -shift
    mod size."""
    a = (-shift) % size
    head = cx.op("Slice", [x, cx.ints([a]), cx.ints([size]), cx.ints([axis])])
    tail = cx.op("Slice", [x, cx.ints([0]), cx.ints([a]), cx.ints([axis])])
    return cx.op("Concat", [head, tail], axis=axis)


def _unit(cx: Exporter, x: str, eps: float = 1e-12) -> str:
    """F.normalize(x, dim=-1): x / max(||x||, eps) (ReduceL2, Clip(min=eps), Div: torch.onnx's form)."""
    norm = cx.op("ReduceL2", [x], axes=[-1], keepdims=1)
    return cx.op("Div", [x, cx.op("Clip", [norm, cx.const(np.float32(eps))])])


def _table_bias(cx: Exporter, table: str, wh: int, ww: int) -> str:
    """table[relative_position_index].view(T, T, -1).permute(2, 0, 1).unsqueeze(0): [1, heads, T, T]."""
    t = wh * ww
    index = cx.const(relative_position_index(wh, ww).reshape(-1), np.int64)
    bias = cx.op("Reshape", [cx.op("Gather", [table, index], axis=0), cx.ints([t, t, -1])])
    return cx.op("Unsqueeze", [cx.op("Transpose", [bias], perm=[2, 0, 1]), cx.ints([0])])


def _cpb_bias(cx: Exporter, wh: int, ww: int, heads: int) -> str:
    """SwinV2's 16 sigmoid(cpb_mlp(relative_coords_table)) gathered by the index, as nodes on the cpb_mlp's
    parameters (the coordinates table a constant)."""
    coords = cx.const(relative_coords_table(wh, ww))
    hidden = cx.op("Relu", [linear(cx, coords, TensorType((1, 1, 1, 2)), cx.param("cpb_mlp.0.weight"),
                                   cx.param("cpb_mlp.0.bias"))])
    table = linear(cx, hidden, TensorType((1, 1, 1, 2)), cx.param("cpb_mlp.2.weight"), None)
    bias = _table_bias(cx, cx.op("Reshape", [table, cx.ints([-1, heads])]), wh, ww)
    return cx.op("Mul", [cx.op("Sigmoid", [bias]), cx.const(np.float32(16.0))])


def _window_attention(cx, node, args, ins):
    """torchvision's shifted_window_attention node for node as torch.onnx writes it (what
    convdsl/importer/onnx_window.py checks on import): pad, roll, windows [N*nW, T, C], q/k/v (V2: the key's
    bias zeroed by ScatterND), q * scale (V2: normalized q, k and the logits times exp(min(logit_scale,
    log 100))), + the relative position bias gathered from its table (V2: 16 sigmoid of the cpb MLP's),
    + the shift mask, softmax, times v, projection, back.  The parameters are the initializers."""
    a = node.attrs
    h, w, c = _static(cx, ins[0], 1, 2, 3)
    wh, ww = tuple_n(a["window"], 2)
    heads = a["heads"]
    d = c // heads
    t = wh * ww
    cx.record(window=[wh, ww], shift=list(tuple_n(a["shift"], 2)), qkv=a["qkv"], proj=a["proj"],
              **({"scale": a["scale"]} if a["scale"] is not None else {}),
              **{k: a[k] for k in ("dropout", "proj_dropout") if a[k]})
    x = args[0]
    ph, pw = (wh - h % wh) % wh, (ww - w % ww) % ww
    if ph or pw:  # zero-pad bottom/right to whole windows
        x = cx.op("Pad", [x, cx.ints([0, 0, 0, 0, 0, ph, pw, 0])])
    hp, wp = h + ph, w + pw
    shift = tuple_n(a["shift"], 2)
    sh = shift[0] if wh < hp else 0  # no shift along a side one window covers
    sw = shift[1] if ww < wp else 0
    if sh:
        x = roll(cx, x, hp, 1, -sh)
    if sw:
        x = roll(cx, x, wp, 2, -sw)
    nh, nw = hp // wh, wp // ww
    nwin = nh * nw
    x = cx.op("Reshape", [x, cx.ints([0, nh, wh, nw, ww, c])])
    x = cx.op("Reshape", [cx.op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5]), cx.ints([-1, t, c])])  # [N*nW, T, C]
    qkv_bias = _opt(cx, f"{a['qkv']}.bias")
    if a["v2"] and qkv_bias is not None:  # V2 leaves the key's bias out: zeroed as torchvision does (ScatterND)
        qkv_bias = cx.op("ScatterND", [qkv_bias, cx.const(np.arange(c, 2 * c).reshape(c, 1), np.int64),
                                       cx.const(np.zeros(c, np.float32))])
    qkv = linear(cx, x, TensorType((1, t, c)), cx.param(f"{a['qkv']}.weight"), qkv_bias)
    qkv = cx.op("Reshape", [qkv, cx.ints([-1, t, 3, heads, d])])
    qkv = cx.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # [3, N*nW, heads, T, d]
    q, k, v = (cx.op("Gather", [qkv, cx.const(np.int64(i), np.int64)], axis=0) for i in range(3))
    if a["v2"]:  # cosine attention: logits of unit q, k times exp(min(logit_scale, log 100)) per head
        logits = cx.op("MatMul", [_unit(cx, q), cx.op("Transpose", [_unit(cx, k)], perm=[0, 1, 3, 2])])
        clamped = cx.op("Clip", [cx.param("logit_scale"), "", cx.const(np.float32(math.log(100.0)))])
        logits = cx.op("Mul", [logits, cx.op("Exp", [clamped])])
        bias = _cpb_bias(cx, wh, ww, heads)
    else:
        q = cx.op("Mul", [q, cx.const(np.float32(a["scale"] or d ** -0.5))])
        logits = cx.op("MatMul", [q, cx.op("Transpose", [k], perm=[0, 1, 3, 2])])
        bias = _table_bias(cx, cx.param("relative_position_bias_table"), wh, ww)
    logits = cx.op("Add", [logits, bias])
    if sh or sw:
        logits = cx.op("Reshape", [logits, cx.ints([-1, nwin, heads, t, t])])
        logits = cx.op("Add", [logits, cx.const(shift_mask(hp, wp, wh, ww, sh, sw)[None, :, None])])
        logits = cx.op("Reshape", [logits, cx.ints([-1, heads, t, t])])
    y = cx.op("MatMul", [cx.op("Softmax", [logits], axis=-1), v])
    y = cx.op("Reshape", [cx.op("Transpose", [y], perm=[0, 2, 1, 3]), cx.ints([-1, t, c])])
    y = linear(cx, y, TensorType((1, t, c)), cx.param(f"{a['proj']}.weight"), _opt(cx, f"{a['proj']}.bias"))
    y = cx.op("Reshape", [y, cx.ints([-1, nh, nw, wh, ww, c])])
    y = cx.op("Reshape", [cx.op("Transpose", [y], perm=[0, 1, 3, 2, 4, 5]), cx.ints([-1, hp, wp, c])])
    if sh:
        y = roll(cx, y, hp, 1, sh)
    if sw:
        y = roll(cx, y, wp, 2, sw)
    if ph:
        y = cx.op("Slice", [y, cx.ints([0]), cx.ints([h]), cx.ints([1])])
    if pw:
        y = cx.op("Slice", [y, cx.ints([0]), cx.ints([w]), cx.ints([2])])
    return y


# ---- CvT convolutional attention ---------------------------------------------------------------
def _dw_bn(cx: Exporter, x: str, prefix: str, c: int, k: int, stride: int, eps: float = 1e-5) -> str:
    """Depthwise conv (padding k//2, no bias) + inference batchnorm."""
    y = cx.op("Conv", [x, cx.param(f"{prefix}.conv.weight")], kernel_shape=[k, k], strides=[stride, stride],
              pads=[k // 2] * 4, group=c)
    return cx.op("BatchNormalization", [y, cx.param(f"{prefix}.bn.weight"), cx.param(f"{prefix}.bn.bias"),
                                        cx.param(f"{prefix}.bn.running_mean"), cx.param(f"{prefix}.bn.running_var")],
                 epsilon=eps)


def tokens(cx: Exporter, x: str, c: int) -> str:
    """[N, C, H, W] -> [N, H*W, C]."""
    return cx.op("Transpose", [cx.op("Reshape", [x, cx.ints([0, c, -1])])], perm=[0, 2, 1])


def _conv_attention(cx, node, args, ins):
    a = node.attrs
    c, = _static(cx, ins[0], 1)
    _, _, ho, wo = node.types[0].shape
    k, heads = a["k"], a["heads"]
    d = c // heads
    x = args[0]
    tok = TensorType((1, 1, c))
    q = tokens(cx, _dw_bn(cx, x, "conv_proj_q", c, k, a["stride_q"]), c)
    kk = tokens(cx, _dw_bn(cx, x, "conv_proj_k", c, k, a["stride_kv"]), c)
    v = tokens(cx, _dw_bn(cx, x, "conv_proj_v", c, k, a["stride_kv"]), c)
    q, kk, v = (heads_first(cx, linear(cx, t, tok, cx.param(f"proj_{s}.weight"), _opt(cx, f"proj_{s}.bias")), heads, d)
                for t, s in ((q, "q"), (kk, "k"), (v, "v")))
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(d)
    y = heads_last(cx, attend(cx, q, kk, v, 4, scale), c)
    y = linear(cx, y, tok, cx.param("proj.weight"), _opt(cx, "proj.bias"))
    y = cx.op("Transpose", [y], perm=[0, 2, 1])
    return cx.reshape(y, TensorType((ins[0].shape[0], c, "L")), (ins[0].shape[0], c, ho, wo), [(args[0], ins[0])])


# ---- HaloNet ---------------------------------------------------------------------------------------
def _conv1x1(cx: Exporter, x: str, weight: str, bias: str | None) -> str:
    return cx.op("Conv", [x, weight] + ([bias] if bias else []), kernel_shape=[1, 1])


def _halo_attention(cx, node, args, ins):
    a = node.attrs
    c, h, w = _static(cx, ins[0], 1, 2, 3)
    heads, b, halo, dim = a["heads"], a["block_size"], a["halo"], a["dim"]
    win, d = b + 2 * halo, dim // heads
    nh, nw = h // b, w // b
    x = args[0]
    # queries: [N, dim, H, W] -> [N, heads, blocks, b*b, d]
    q = _conv1x1(cx, x, cx.param("q.weight"), _opt(cx, "q.bias"))
    q = cx.op("Reshape", [q, cx.ints([0, heads, d, nh, b, nw, b])])
    q = cx.op("Transpose", [q], perm=[0, 1, 3, 5, 4, 6, 2])  # [N, heads, nh, nw, by, bx, d]
    qb = cx.op("Reshape", [q, cx.ints([0, heads, nh * nw, b, b, d])])
    q = cx.op("Reshape", [q, cx.ints([0, heads, nh * nw, b * b, d])])
    # keys/values: zero-pad by halo, cut overlapping win x win windows at stride b (gathers)
    kv = _conv1x1(cx, x, cx.param("kv.weight"), _opt(cx, "kv.bias"))
    kv = cx.op("Pad", [kv, cx.ints([0, 0, halo, halo, 0, 0, halo, halo])])
    rows = (np.arange(nh)[:, None] * b + np.arange(win)[None, :]).ravel()
    cols = (np.arange(nw)[:, None] * b + np.arange(win)[None, :]).ravel()
    kv = cx.op("Gather", [kv, cx.const(rows, np.int64)], axis=2)
    kv = cx.op("Gather", [kv, cx.const(cols, np.int64)], axis=3)
    kv = cx.op("Reshape", [kv, cx.ints([0, 2 * dim, nh, win, nw, win])])
    kv = cx.op("Transpose", [kv], perm=[0, 1, 2, 4, 3, 5])  # [N, 2dim, nh, nw, win, win]
    kv = cx.op("Reshape", [kv, cx.ints([0, heads, 2 * d, nh * nw, win * win])])
    kv = cx.op("Transpose", [kv], perm=[0, 1, 3, 4, 2])  # [N, heads, blocks, win*win, 2d]
    k, v = cx.op("Split", [kv, cx.ints([d, d])], outputs=2, axis=4)
    # relative logits: q . height_rel[ky - qy + win - 1] and q . width_rel[kx - qx + win - 1]
    # the whole tables are initializers and the gather a node, so every row is in the file
    offset = cx.const(np.arange(win)[None, :] - np.arange(b)[:, None] + win - 1, np.int64)  # [b, win]

    def table(name: str) -> str:  # table[offset] as [q, d, k]
        return cx.op("Transpose", [cx.op("Gather", [cx.param(name), offset], axis=0)], perm=[0, 2, 1])

    rel_h = cx.op("MatMul", [qb, table("pos_embed.height_rel")])  # [N, heads, blocks, qy, qx, ky]
    qt = cx.op("Transpose", [qb], perm=[0, 1, 2, 4, 3, 5])  # [..., qx, qy, d]
    rel_w = cx.op("Transpose", [cx.op("MatMul", [qt, table("pos_embed.width_rel")])], perm=[0, 1, 2, 4, 3, 5])
    rel = cx.op("Add", [cx.op("Unsqueeze", [rel_h, cx.ints([6])]), cx.op("Unsqueeze", [rel_w, cx.ints([5])])])
    rel = cx.op("Reshape", [rel, cx.ints([0, heads, nh * nw, b * b, win * win])])
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(d)
    y = attend(cx, q, k, v, 5, scale, rel)  # [N, heads, blocks, b*b, d]
    y = cx.op("Reshape", [y, cx.ints([0, heads, nh, nw, b, b, d])])
    y = cx.op("Transpose", [y], perm=[0, 1, 6, 2, 4, 3, 5])
    return cx.op("Reshape", [y, cx.ints([0, dim, h, w])])


# ---- tokens ----------------------------------------------------------------------------------------
def _patch_embed(cx, node, args, ins):
    ph, pw = tuple_n(node.attrs["patch"], 2)
    y = cx.op("Conv", [args[0], cx.param("weight")] + ([cx.param("bias")] if node.attrs["bias"] else []),
              kernel_shape=[ph, pw], strides=[ph, pw])
    return tokens(cx, y, node.attrs["dim"])


def _class_token(cx, node, args, ins):
    _, _, c = ins[0].shape
    shape = cx.shape_tensor((ins[0].shape[0], node.attrs["tokens"], c), [(args[0], ins[0])])
    tok = cx.op("Expand", [cx.param("class_token"), shape])
    return cx.op("Concat", [tok, args[0]], axis=1)


def sinusoid_table(length: int, c: int) -> np.ndarray:
    """sin on even, cos on odd channels, in float32 as PositionEmbedding computes it."""
    pos = np.arange(length, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, c, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / c))
    return np.stack([np.sin(pos * freq), np.cos(pos * freq)], axis=-1).reshape(length, c)


def _pos_embed(cx, node, args, ins):
    if node.attrs["kind"] == "learned":
        return cx.op("Add", [args[0], cx.param("pos_embedding")])
    length, c = _static(cx, ins[0], 1, 2)
    return cx.op("Add", [args[0], cx.const(sinusoid_table(length, c))])


def _layer_scale(cx, node, args, ins):
    return cx.op("Mul", [args[0], cx.param("layer_scale")])


EXPORTS = family("attention", {
    "mhsa": _mhsa,
    "packed_attention": _packed_attention,
    "cross_attention": _cross_attention,
    "window_attention": _window_attention,
    "conv_attention": _conv_attention,
    "halo_attention": _halo_attention,
    "patch_embed": _patch_embed,
    "class_token": _class_token,
    "pos_embed": _pos_embed,
    "layer_scale": _layer_scale,
})
