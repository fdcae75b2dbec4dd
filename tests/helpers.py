"""Small shared test utilities."""
from __future__ import annotations

from convdsl.backends.torch import build_module
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import Options, elaborate

RESNETISH = """
block conv_bn(c, k=3, stride=1, act=relu) =
    conv2d(c, k, stride=stride, pad=k // 2, bias=false) as conv | batchnorm as bn | act

block basic(c, stride=1)(x) {
    y = x | conv_bn(c, stride=stride) as a | conv_bn(c, act=identity) as b
    s = x | conv_bn(c, k=1, stride=stride, act=identity) as downsample if stride != 1 or channels(x) != c else x
    return relu(y + s)
}

network net(image: f32[N, 3, 16, 16], classes=10) {
    x = image | conv_bn(8) as stem
    for i, c in enumerate([8, 16]) {
        x = x | basic(c, stride=1 if i == 0 else 2) as "layer{i + 1}.0"
    }
    return x | linear(classes) as fc
}
"""

# Issue 14 item 2, the user's program: windows folded into the batch for attention and back, the
# sizes computed from dim(x, i) (symbolic N: n * 2 * 2 is 4*N, and [n, ...] unfolds it again).
WINDOW_ATTENTION = """
block window_attn(heads, p=4)(x) {
    n, c, h, w = (dim(x, 0), dim(x, 1), dim(x, 2), dim(x, 3))
    t = x | reshape([n, c, h // p, p, w // p, p]) | permute([0, 2, 4, 3, 5, 1])
          | reshape([n * (h // p) * (w // p), p * p, c])
    t = t | mhsa(heads) as attn
    return t | reshape([n, h // p, w // p, p, p, c]) | permute([0, 5, 1, 3, 2, 4])
             | reshape([n, c, h, w])
}

network windows(x: f32[N, 16, 8, 8]) {
    return x | conv2d(16, 3, pad=1) as stem | window_attn(4) as win
}
"""


def graph_of(text: str, **opts):
    return verify(elaborate(text, "<test>", options=Options(**opts)))


def module_of(text: str, **opts):
    return build_module(graph_of(text, **opts))
