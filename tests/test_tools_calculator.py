"""The `calculator` tool: exact results formatted for a model, and bad input as ToolException.

The evaluator's own rules (notation, what each rule set allows) are tested in
test_tools_arithmetic.py.
"""

from __future__ import annotations

import pytest
from langchain_core.tools import ToolException

from agentflow.tools.calculator import CalculatorTool


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("12345*6789", "83810205"),
        ("12,345 × 6,789", "83810205"),
        ("1,000,000 / 8", "125000"),
        ("7/2", "7/2 = 3.5"),
        ("-7/2", "-7/2 = -3.5"),
        ("1/3", "1/3 ≈ 0.333333333333333"),
        ("0.1 + 0.2", "3/10 = 0.3"),
        ("2^10", "1024"),
        ("2**-2", "1/4 = 0.25"),
        ("3 ÷ 4 + 1", "7/4 = 1.75"),
        ("17 // 5 + 17 % 5", "5"),
        ("(1 + 2) * -(3 - 5)", "6"),
        ("sqrt(144)", "12"),
        ("sqrt(9/4)", "3/2 = 1.5"),
        ("sqrt(2)", "1.4142135623730951"),
        ("max(1,234)", "234"),
        ("min(3, 1.5, 2)", "3/2 = 1.5"),
        ("abs(-5) + round(2.5) + round(3.14159, 2)", "557/50 = 11.14"),
        ("round(-2.5) + round(1234.5678, -2)", "1197"),
        ("factorial(10)", "3628800"),
        ("gcd(12, 18) + lcm(4, 6)", "18"),
        ("floor(7/2) + ceil(7/2)", "7"),
        ("log(8, 2)", "3"),
        ("1e3", "1000"),
        ("0x10", "16"),
    ],
)
def test_evaluates_exactly(expression: str, expected: str) -> None:
    assert CalculatorTool().invoke({"expression": expression}) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 +", "cannot parse"),
        ("", "empty expression"),
        ("x + 1", "unknown name 'x'"),
        ("__import__('os').system('true')", "unknown function"),
        ("(1).__class__", "unsupported syntax"),
        ("[1, 2]", "unsupported syntax"),
        ("'a' * 3", "unsupported syntax"),
        ("9 ** 9 ** 9", "exponent larger than"),
        ("10 ** 5000", "result too large"),
        ("factorial(100000)", "factorial needs"),
        ("factorial(2.5)", "whole numbers"),
        ("sqrt(-1)", "negative"),
        ("(-8) ** 0.5", "negative number"),
        ("min()", "bad arguments to min"),
        ("log(0)", "positive"),
        ("exp(100000)", "too large"),
        ("1" * 3000, "longer than"),
        # each of these used to hang the tool or escape as another exception type
        ("1e999999999", "out of range"),
        ("1e-999999999", "out of range"),
        ("round(1, 10**9)", "round needs"),
        ("+".join(["1"] * 999), "nested too deeply"),
    ],
)
def test_rejects_bad_input_with_tool_exception(expression: str, message: str) -> None:
    with pytest.raises(ToolException, match=message):
        CalculatorTool().invoke({"expression": expression})
