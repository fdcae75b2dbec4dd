"""Attribute domains (convdsl/ir/domains.py) and their one check, in bind_attrs."""
import math

import pytest

from convdsl.errors import CDLTypeError
from convdsl.ir.domains import ANY, FLOAT_MAX, INT_MAX, INT_MIN, MAX_LIST, Domain
from convdsl.ir.ops import OPS
from convdsl.ir.optable import REQUIRED, Attr, OpDef, bind_attrs


def _op(*attrs: Attr) -> OpDef:
    return OpDef(name="probe", group="test", attrs=attrs, infer=lambda a, ins: ins)


@pytest.mark.parametrize("interval, inside, outside", [
    ("[0, 1]", [0, 0.0, 0.5, 1, 1.0], [-1e-9, 1.0000001, -1, 2]),
    ("(0, 1)", [1e-300, 0.5, 0.9999], [0, 0.0, 1, 1.0]),
    ("[1, inf)", [1, 7, INT_MAX, 1.5, FLOAT_MAX], [0, -3, INT_MAX + 1, math.inf, 2.0 * FLOAT_MAX]),
    ("(0, inf]", [1e-300, 2.0, math.inf], [0.0, -math.inf, -1.0]),
    ("[-inf, inf]", [-math.inf, math.inf, 0.0], [math.nan]),
    ("(-inf, inf)", [INT_MIN, INT_MAX, -FLOAT_MAX, FLOAT_MAX], [INT_MIN - 1, INT_MAX + 1, 3.5e38, math.inf, math.nan]),
])
def test_domain_admits_exactly_its_interval_within_int32_and_float32(interval, inside, outside):
    d = Domain(interval)
    for v in inside:
        assert d.admits(v), (interval, v)
    for v in outside:
        assert not d.admits(v), (interval, v)


def test_a_bad_or_empty_interval_is_a_programming_error():
    for text in ("0, 1", "[1, 0]", "[a, b]", "[0; 1]"):
        with pytest.raises(ValueError):
            Domain(text)


def test_describe_names_the_interval_in_the_attribute_kind():
    assert Domain("[1, inf)").describe(integer=True) == f"an integer in [1, {INT_MAX}]"
    assert Domain("(0, 8)").describe(integer=True) == "an integer in [1, 7]"
    assert Domain("[0, 1]").describe(integer=False) == "a finite number in [0, 1]"
    assert Domain("(0, inf]").describe(integer=False) == "a number in (0, inf]"
    assert "3.4e38" in ANY.describe(integer=False)


def test_the_message_says_which_rule_the_value_breaks():
    d = Domain("[1, inf)", name="positive")
    assert d.why_not(0) == "must be positive"
    assert d.why_not(2**31).startswith("is past what every backend holds")
    assert d.why_not(math.nan) == "cannot be NaN"
    assert Domain("[0, 1)").why_not(1.0) == "must be in [0, 1)"


def test_bind_attrs_refuses_a_value_outside_the_domain_with_the_domain_and_the_value():
    op = _op(Attr("eps", "float", 1e-5, domain=Domain("(0, inf)")), Attr("k", "ints", 3, domain=Domain("[1, inf)")))
    with pytest.raises(CDLTypeError) as e:
        bind_attrs(op, [], {"eps": -0.5})
    assert e.value.message == "probe: eps must be in (0, inf)"
    assert e.value.expected == "a finite number in (0, inf), at most 3.4e38 in magnitude"
    assert e.value.got == "-0.5"
    with pytest.raises(CDLTypeError) as e:
        bind_attrs(op, [], {"k": [3, 0]})  # a list: each entry
    assert "each entry" in e.value.expected and e.value.got == "0"
    with pytest.raises(CDLTypeError) as e:
        bind_attrs(op, [], {"k": [1] * (MAX_LIST + 1)})
    assert e.value.got == f"{MAX_LIST + 1} entries"
    with pytest.raises(CDLTypeError) as e:
        bind_attrs(op, [], {"k": 10**5000})  # an integer too long for str() is still shown
    assert e.value.got.startswith("about 1.0e+5000")
    assert bind_attrs(op, [], {"eps": 2, "k": [1, 2]}) == {"eps": 2.0, "k": (1, 2)}


def test_an_attribute_without_a_domain_still_refuses_what_no_backend_holds():
    op = _op(Attr("x", "float", 0.0), Attr("n", "int", 0), Attr("s", "float|floats", None))
    for kwargs in ({"x": math.inf}, {"x": math.nan}, {"x": -1e300}, {"n": 2**31}, {"n": -(2**63)},
                   {"s": [1.0, math.nan]}):
        with pytest.raises(CDLTypeError):
            bind_attrs(op, [], kwargs)
    assert bind_attrs(op, [], {"x": -FLOAT_MAX, "n": INT_MIN, "s": None}) == {"x": -FLOAT_MAX, "n": INT_MIN, "s": None}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_default_lies_in_its_domain(name):
    """A default outside its own domain would make the op unusable without that attribute."""
    for a in OPS[name].attrs:
        if a.default is REQUIRED or a.default is None or isinstance(a.default, (bool, str)):
            continue
        values = a.default if isinstance(a.default, tuple) else (a.default,)
        assert all((a.domain or ANY).admits(v) for v in values), (name, a.name, a.default, a.domain)
