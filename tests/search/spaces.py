"""Tiny search spaces for the search tests (8x8 digits, a few hundred parameters)."""

TINY = """\
# a tiny space: a width, a token mixer among conv / FFT / SSM, a depth
block conv_mixer(k=3) = conv2d(k=k, pad=k // 2, groups=depthwise) | batchnorm
block fft_mixer() = global_filter

# an SSM over the rows-flattened map
block ssm_mixer(state=4)(x) {
    c, h, w = (channels(x), dim(x, 2), dim(x, 3))
    return x | flatten(2) | s4d(state) as ssm | reshape([0, c, h, w])
}

network tiny(image: f32[N, 1, 8, 8], classes=10) {
    width = choice(4, 8, name="width")
    x = image | conv2d(width, 3, pad=1) as stem | relu
    for i in range(choice(1, 2, name="depth")) {
        x = x + (x | choice(conv_mixer(3), fft_mixer(), ssm_mixer(4), name="mixer") as "mix{i}")
    }
    x = x | conv2d(width, 1) as proj | relu
    return x | global_avgpool(keepdim=false) | linear(classes) as head
}
"""

# anonymous choices (keyed by line:col) and a ratio
ANONYMOUS = """\
network anon(image: f32[N, 1, 8, 8], classes=10) {
    x = image | conv2d(choice(4, 8), choice(1, 3), pad=same) | relu
    return x | global_avgpool(keepdim=false) | linear(classes)
}
"""
