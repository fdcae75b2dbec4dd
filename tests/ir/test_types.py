import pytest

from convdsl.ir.types import (Size, TensorType, bind_dim, dim_add, dim_div_exact, dim_eval, dim_floordiv, dim_mul,
                               dims_prod, size_arith, size_value, symbol_sources)


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


# ---- products and quotients of symbols (issue 14 item 2) ---------------------------------------
VALUES = [{"N": n, "H": h, "W": w} for n, h, w in [(1, 1, 1), (2, 3, 5), (3, 7, 4), (8, 14, 14), (5, 224, 9)]]


@pytest.mark.parametrize("a, b, q", [
    ("4*N", 4, "N"), ("4*H*W", "W", "4*H"), ("4*N", "N", 4), ("N*N", "N", "N"),
    ("2*N+2", dim_add("N", 1), 2), (dim_add(dim_mul("N", 4), 8), 4, dim_add("N", 2)), (48, 6, 8),
])
def test_exact_division_of_sizes_is_the_quotient_for_every_value(a, b, q):
    assert dim_div_exact(a, b) == q
    for v in VALUES:  # the reference: Python integers at the symbols' values
        assert bind_dim(a, v) == bind_dim(q, v) * bind_dim(b, v)


@pytest.mark.parametrize("a, b", [("N", 4), ("4*N", 8), ("H", "W"), ("H*W", "N"), ("N+1", "N"), ("(H-1)//2+1", 2), (7, 2)])
def test_a_division_that_holds_only_for_some_values_is_refused(a, b):
    assert dim_div_exact(a, b) is None
    with pytest.raises(ValueError, match="not a multiple"):
        size_arith("/", size_value(a), size_value(b))


def test_size_values_keep_the_canonical_form():
    n = Size("N")
    assert size_arith("*", n, 4) == Size("4*N")
    assert size_arith("*", 4, n) == Size("4*N")
    assert size_arith("/", size_arith("*", n, 4), 4) == n           # fold into the batch and back
    assert size_arith("/", size_arith("*", n, 4), n) == 4            # a plain integer again
    assert size_arith("-", n, n) == 0
    assert size_arith("*", Size("H"), Size("W")) == size_arith("*", Size("W"), Size("H")) == Size("H*W")
    assert size_arith("//", n, 4) == Size("(N)//4")                 # floor division stays one (opaque) factor
    assert size_arith("//", size_arith("*", n, 8), 4) == Size("2*N")
    with pytest.raises(ZeroDivisionError):
        size_arith("//", n, 0)


@pytest.mark.parametrize("d", ["N", "4*N", "H*W", "(H-1)//2+1", dim_add(dim_mul("H", 3), -2), "2*H*N*W"])
def test_dim_eval_computes_a_dim_from_its_symbols_values(d):
    for v in VALUES:
        assert dim_eval(d, v) == bind_dim(d, v)
    with pytest.raises(KeyError):
        dim_eval(d, {})


def test_symbol_sources_find_each_symbol_in_the_plainest_dim():
    assert symbol_sources(["4*N", 16, "N", "H*W", "2*H"]) == {"N": (2, 1), "H": (4, 2)}
    assert symbol_sources([8, "(H-1)//2+1"]) == {}
