import pytest

from convdsl.ir.types import TensorType, bind_dim, dim_add, dim_floordiv, dim_mul, dims_prod


def test_padded_stride1_conv_keeps_the_symbol():
    # conv k=3 pad=1: (H + 2 - 3) // 1 + 1
    assert dim_add(dim_floordiv(dim_add("H", -1), 1), 1) == "H"


@pytest.mark.parametrize("h", [1, 2, 7, 8, 9, 224])
def test_symbolic_arithmetic_matches_integers(h):
    d = dim_add(dim_floordiv(dim_add("H", 2 - 3), 2), 1)  # stride-2 conv
    assert bind_dim(d, {"H": h}) == (h - 1) // 2 + 1
    e = dim_mul(dim_add("H", 1), 3)
    assert bind_dim(e, {"H": h}) == (h + 1) * 3
    assert bind_dim(dim_add("H", -5), {"H": h}) == h - 5


def test_canonical_text_and_products():
    assert dim_mul("H", 4) == "4*H"
    assert dim_floordiv(dim_mul("H", 4), 2) == "2*H"
    assert bind_dim(dims_prod(["N", "L", 4]), {"N": 2, "L": 3}) == 24
    assert dim_add("H", dim_mul("H", -1)) == 0  # collapses to an int


def test_numel_binds_unknown_symbols_to_one():
    assert TensorType(("N", 3, "H")).numel({"H": 5}) == 15
