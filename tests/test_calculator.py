"""Tests for the safe arithmetic evaluator behind the built-in ``calculator`` tool."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest

from gecko_actors.core import calculator
from gecko_actors.core.calculator import CalculatorLimits, evaluate, format_result
from gecko_actors.exceptions import CalculatorError, ToolError

SYNTAX_HINT = "use only numbers, + - * / // % ** and parentheses"


def refusal(expression: object, limits: CalculatorLimits = CalculatorLimits()) -> CalculatorError:
    """Evaluate ``expression``, assert that it is refused, and return the error."""
    with pytest.raises(CalculatorError) as info:
        evaluate(expression, limits)  # type: ignore[arg-type]
    return info.value


# --- correct results -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 2 - 3", 5),  # left-associative
        ("2 ** 3 ** 2", 512),  # right-associative
        ("-2 ** 2", -4),  # ** binds tighter than unary minus
        ("(-2) ** 2", 4),
        ("2 ** -1", 0.5),
        ("--5", 5),
        ("+5", 5),
        ("-(3 - 5)", 2),
        ("7 / 2", 3.5),
        ("100 / 10 / 5", 2.0),
        ("-7 // 2", -4),
        ("7 // -2", -4),
        ("-7 % 3", 2),
        ("7 % -3", -2),
        ("7.5 // 2", 3.0),
        ("-7.5 % 2", 0.5),
        ("1e3 + 1", 1001.0),
        ("1_000 + 0x10", 1016),
        ("  3 * 4  ", 12),
        ("(1 +\n 2)", 3),
        ("2 ** 0.5 * 2 ** 0.5", pytest.approx(2.0)),
        ("(-8.0) ** 2.0", 64.0),
    ],
)
def test_results(expression: str, expected: float) -> None:
    assert evaluate(expression) == expected


def test_result_types() -> None:
    assert type(evaluate("4 / 2")) is float
    assert type(evaluate("2 ** 10")) is int
    assert type(evaluate("7 // 2")) is int
    assert type(evaluate("7.0 // 2")) is float


def test_big_ints_are_exact() -> None:
    assert evaluate("2 ** 1000") == 2**1000
    assert evaluate("12345678901234567890 * 98765432109876543210") == (
        12345678901234567890 * 98765432109876543210
    )
    # Exactly max_digits (1000) digits is allowed, including as an intermediate result.
    assert evaluate("10 ** 999 + 1") == 10**999 + 1
    assert evaluate("10 ** 999 * 9 // 9") == 10**999
    assert format_result(evaluate("10 ** 999 + 1")) == "1" + "0" * 998 + "1"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7, "7"),
        (-12, "-12"),
        (2**100, str(2**100)),
        (3.5, "3.5"),
        (2.0, "2"),
        (0.1 + 0.2, "0.3"),
        (1 / 3, "0.333333333333333"),
        (1e20, "1e+20"),
        (-0.5, "-0.5"),
    ],
)
def test_format_result(value: float, text: str) -> None:
    assert format_result(value) == text


def test_format_result_rejects_non_numbers() -> None:
    with pytest.raises(TypeError):
        format_result(True)
    with pytest.raises(TypeError):
        format_result("1")  # type: ignore[arg-type]


# --- refused constructs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x", "names are not allowed in calculator expressions: 'x'"),
        ("pi * 2", "names are not allowed in calculator expressions: 'pi'"),
        ("(1).__class__", "attributes are not allowed in calculator expressions: '(1).__class__'"),
        (
            "__import__('os')",
            "function calls are not allowed in calculator expressions: \"__import__('os')\"",
        ),
        ("abs(-1)", "function calls are not allowed"),
        ("[1, 2][0]", "subscripts are not allowed"),
        ("lambda: 1", "lambdas are not allowed"),
        ("[x for x in range(3)]", "comprehensions are not allowed"),
        ("sum(x for x in (1, 2))", "function calls are not allowed"),
        ("1 < 2", "comparisons are not allowed in calculator expressions: '1 < 2'"),
        ("1 and 2", "boolean operators (and/or) are not allowed"),
        ("not 1", "the 'not' operator is not allowed"),
        ("1 if 1 else 2", "conditional expressions are not allowed"),
        ("'abc'", "strings are not allowed in calculator expressions: \"'abc'\""),
        ("'a' * 10 ** 9", "strings are not allowed"),
        ("b'abc'", "bytes are not allowed"),
        ("True", "booleans are not allowed in calculator expressions: 'True'"),
        ("True + 1", "booleans are not allowed"),
        ("None", "None is not allowed"),
        ("...", "ellipsis (...) is not allowed"),
        ("1j", "complex numbers are not allowed"),
        ("1 << 2", "the '<<' operator (bit shift) is not allowed"),
        ("6 & 3", "the '&' operator (bitwise and) is not allowed"),
        ("2 ^ 3", "the '^' operator (bitwise xor; write powers as **) is not allowed"),
        ("~1", "the '~' operator (bitwise not) is not allowed"),
        ("1 @ 2", "the '@' operator (matrix multiplication) is not allowed"),
        ("f'{1}'", "f-strings are not allowed"),
        ("(y := 2)", "assignment expressions (:=) are not allowed"),
        ("1, 2", "tuples are not allowed"),
        ("{1: 2}", "dicts are not allowed"),
        ("{1, 2}", "sets are not allowed"),
    ],
)
def test_refused_constructs(expression: str, message: str) -> None:
    err = refusal(expression)
    assert err.message.startswith(message)
    assert err.hint == SYNTAX_HINT


def test_first_offender_in_source_order_is_reported() -> None:
    assert refusal("1 + a + b").message.endswith(": 'a'")


def test_refusal_happens_before_any_computation() -> None:
    # The name is refused even though 9 ** 9 ** 9 on its left would be far too big to compute.
    assert refusal("9 ** 9 ** 9 + x").message.startswith("names are not allowed")


@pytest.mark.parametrize("expression", ["1 +", "import os", "x = 1", "1 2", "1\n+2", "1\x00"])
def test_syntax_errors(expression: str) -> None:
    assert refusal(expression).message.startswith("syntax error")


def test_syntax_error_names_the_column() -> None:
    assert re.match(r"syntax error at column \d+: ", refusal("1 2").message)


@pytest.mark.parametrize("expression", ["", "   ", "\n\t"])
def test_empty_expression(expression: str) -> None:
    assert refusal(expression).message == "the expression is empty"


@pytest.mark.parametrize("value", [42, None, b"1+1", ["1"]])
def test_non_string_input(value: object) -> None:
    err = refusal(value)
    assert err.message == f"the expression must be a string, not {type(value).__name__}"
    assert err.context == {"expression": f"<{type(value).__name__}>"}


# --- limits ----------------------------------------------------------------------------------


def test_huge_exponent_is_refused_before_computing() -> None:
    # 9 ** 9 == 387420489 is fine; 9 ** 387420489 must be refused, not attempted.
    assert refusal("9**9**9").message == "exponent 387420489 is larger than the limit 1000"
    assert refusal("2 ** 100000").message == "exponent 100000 is larger than the limit 1000"
    assert "-100000" in refusal("2 ** -100000").message


def test_power_digit_estimate_is_checked_before_computing() -> None:
    # The exponent is within max_exponent but the result would have ~999000 digits.
    assert refusal("(10 ** 999) ** 1000").message == (
        "<1000-digit number> ** 1000 would have 999001 digits; the limit is 1000"
    )
    assert "would have 1001 digits" in refusal("10 ** 1000").message


def test_product_beyond_max_digits() -> None:
    assert "1001 digits" in refusal("10**1000 * 10**1000").message
    assert refusal("10**600 * 10**600").message == (
        "the product <601-digit number> * <601-digit number> would have at least 1201 digits; "
        "the limit is 1000"
    )
    assert "would have at least 1001 digits" in refusal("10 ** 999 * 10").message


def test_sum_beyond_max_digits_is_caught_after_computing() -> None:
    assert refusal("9 * 10**999 + 10**999").message == (
        "the result of <1000-digit number> + <1000-digit number> has 1001 digits; the limit is 1000"
    )


def test_long_int_literal_is_refused() -> None:
    limits = CalculatorLimits(max_length=2000)
    assert refusal("1" * 1001, limits).message.endswith("has 1001 digits; the limit is 1000")


def test_float_overflow_is_an_error_not_inf() -> None:
    # Under the default limits the exponent itself is already too large...
    assert "exponent 5000" in refusal("2.0 ** 5000").message
    # ...and with a larger exponent limit the float overflow is reported.
    limits = CalculatorLimits(max_exponent=10_000)
    assert refusal("2.0 ** 5000", limits).message == (
        "the result of 2.0 ** 5000 is too large for a float"
    )
    assert "too large for a float" in refusal("10.0 ** 400").message
    assert "too large for a float" in refusal("1e308 * 10").message
    assert "too large for a float" in refusal("10 ** 999 * 1.5").message
    assert "too large for a float" in refusal("1e999").message


def test_max_float_abs_is_configurable() -> None:
    limits = CalculatorLimits(max_float_abs=1e6)
    assert evaluate("1e5 * 10", limits) == 1e6
    assert "too large for a float" in refusal("1e6 * 1.5", limits).message


def test_custom_exponent_limit() -> None:
    limits = CalculatorLimits(max_exponent=10)
    assert evaluate("2 ** 10", limits) == 1024
    assert refusal("2 ** 11", limits).message == "exponent 11 is larger than the limit 10"


def test_over_long_input() -> None:
    expression = "1+" * 300 + "1"
    err = refusal(expression)
    assert err.message == "expression is 601 characters long; the limit is 500"
    assert len(err.context["expression"]) == 80


def test_too_many_nodes() -> None:
    limits = CalculatorLimits(max_depth=1000)
    message = refusal("1+" * 150 + "1", limits).message
    assert message == "expression has more than 200 numbers and operations; the limit is 200"


def test_too_deep() -> None:
    limits = CalculatorLimits(max_depth=50)
    expression = "1+(" * 60 + "1" + ")" * 60
    assert refusal(expression, limits).message == "expression is nested deeper than the limit 50"
    # A flat sum nests to the left, so its length is bounded by max_depth too.
    assert evaluate("1+" * 49 + "1", limits) == 50
    assert "nested deeper" in refusal("1+" * 50 + "1", limits).message
    # The default allows a flat sum of 100 terms (a plausible "add these numbers").
    assert evaluate("+".join(["1"] * 100)) == 100


@pytest.mark.parametrize(
    "expression",
    [
        "(" * 300 + "1" + ")" * 300,
        "(" * 10_000,
        "-" * 100_000 + "1",
        "+" * 5_000 + "1",
    ],
)
def test_pathological_nesting_is_an_error_not_a_crash(expression: str) -> None:
    # Even with every size limit lifted, the parser's and the stack's limits become errors.
    limits = CalculatorLimits(max_length=10**6, max_nodes=10**7, max_depth=10**7)
    err = refusal(expression, limits)
    assert "nested" in err.message


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("1.5 / 0.0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "modulo by zero"),
        ("5 % 0.0", "modulo by zero"),
        ("1 / (2 - 2)", "division by zero"),
        ("0 ** -1", "zero cannot be raised to a negative power"),
        (
            "(-8) ** 0.5",
            "(-8) ** 0.5 is not a real number: a negative number cannot be raised to a "
            "fractional power",
        ),
    ],
)
def test_arithmetic_errors(expression: str, message: str) -> None:
    assert refusal(expression).message == message


# --- the error object ------------------------------------------------------------------------


def test_error_carries_expression_context_and_hint() -> None:
    err = refusal("1 + x")
    assert isinstance(err, ToolError)
    assert err.context == {"expression": "1 + x"}
    assert err.expression == "1 + x"
    assert err.hint == SYNTAX_HINT
    assert str(err) == f"{err.message} Hint: {SYNTAX_HINT}"
    assert err.to_dict()["error_code"] == "calculator_error"


def test_context_is_truncated() -> None:
    expression = "x + " + "1 + " * 50 + "1"
    err = refusal(expression)
    assert err.context["expression"] == expression[:77] + "..."


def test_error_pickles() -> None:
    err = refusal("2 ** 100000")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is CalculatorError
    assert copy.message == err.message
    assert copy.hint == err.hint
    assert copy.context == {"expression": "2 ** 100000"}
    assert str(copy) == str(err)


# --- the module never runs the expression ----------------------------------------------------


def test_source_never_evaluates_code() -> None:
    text = Path(calculator.__file__).read_text(encoding="utf-8")
    text = text.replace("literal_eval", "")
    assert not re.search(r"\b(eval|exec|compile)\s*\(", text)
    # The same check on the syntax tree, which comments and strings cannot fool.
    called = {
        node.func.id
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__", "getattr", "open"}
