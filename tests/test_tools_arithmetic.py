"""The one safe evaluator behind the calculator and the Game-of-24 scorer: notation,
exactness, and what each rule set allows."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentflow.tools.arithmetic import CALCULATOR, FOUR_OPERATIONS, ExpressionError, evaluate, normalize_expression


def test_thousands_separators_only_outside_call_arguments() -> None:
    assert normalize_expression("12,345,678 + 1") == "12345678 + 1"
    assert normalize_expression("max(12,345)") == "max(12,345)"
    assert normalize_expression("(12,345) * 2") == "(12345) * 2"
    assert normalize_expression("1,23") == "1,23"


@given(st.integers(-10**12, 10**12), st.integers(-10**12, 10**12))
def test_integer_arithmetic_matches_python(a: int, b: int) -> None:
    assert evaluate(f"{a} * {b} + {a} - ({b})", CALCULATOR).value == a * b + a - b


def test_decimals_are_exact_and_literals_are_recorded_left_to_right() -> None:
    assert evaluate("0.1 + 0.2", CALCULATOR) == (Fraction(3, 10), (Fraction(1, 10), Fraction(1, 5)))
    assert evaluate("8/(3-8/3)", FOUR_OPERATIONS) == (24, (8, 3, 8, 3))
    assert evaluate("1_000.5 + 2 * pi", CALCULATOR).literals == (Fraction(2001, 2), 2)  # constants are not literals


@pytest.mark.parametrize(
    ("expression", "calculator_value"),
    [
        ("-1 + 25", 24),  # unary sign
        ("2 ** 3 * 3", 24),
        ("2^3 * 3", 24),
        ("49 // 2", 24),
        ("124 % 100", 24),
        ("8.0 * 3", 24),
        ("2.4e1", 24),
        ("0x18", 24),
        ("2_4", 24),
        ("sqrt(576)", 24),
        ("floor(pi) * 8", 24),
    ],
)
def test_game_of_24_refuses_what_the_calculator_allows(expression: str, calculator_value: int) -> None:
    """The two evaluators this module replaced differed exactly here."""
    assert evaluate(expression, CALCULATOR).value == calculator_value
    with pytest.raises(ExpressionError, match=r"use whole numbers and \+ - \* /$"):
        evaluate(expression, FOUR_OPERATIONS)


@pytest.mark.parametrize("rules", [CALCULATOR, FOUR_OPERATIONS], ids=["calculator", "four_operations"])
def test_both_rule_sets_share_notation_and_limits(rules) -> None:
    assert evaluate("8 ÷ (3 − 8 ÷ 3)", rules).value == 24
    assert evaluate("(1 + 1 + 1) × 8", rules).value == 24
    for expression, message in [
        ("8 / (1 - 1)", "division by zero"),
        ("", "empty expression"),
        ("1 +", "cannot parse"),
        ("+".join(["1"] * 999), "nested too deeply"),
        ("1" * 3000, "longer than"),
        ("__import__('os')", "unknown function"),
        ("(1).__class__", "unsupported syntax"),
        ("1 < 2", "unsupported syntax"),
    ]:
        with pytest.raises(ExpressionError, match=message):
            evaluate(expression, rules)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1e999999999", "out of range"),  # checked before Fraction builds a billion-digit integer
        ("1e-999999999", "out of range"),
        ("9 ** 9 ** 9", "exponent larger than"),
        ("10 ** 5000", "result too large"),
        ("round(1, 10**9)", "round needs"),
        ("exp(1000)", "too large"),
    ],
)
def test_huge_numbers_are_refused_before_they_are_computed(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, CALCULATOR)
