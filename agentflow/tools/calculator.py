"""The `calculator` tool: exact arithmetic without eval.

Small models copy numbers as they read them (`12,345 × 6,789`, `2^10`), and
float arithmetic turns `0.1 + 0.2` into `0.30000000000000004`. The expression is
evaluated by `agentflow.tools.arithmetic` under its `CALCULATOR` rules, so only
arithmetic can run and results are exact; this module turns the result into text
a model reads well.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

from agentflow.tools.arithmetic import CALCULATOR, ExpressionError, Number, evaluate
from agentflow.tools.cards import card_metadata


def _format(value: Number) -> str:
    """Integers as integers; other fractions exact plus a decimal (`7/2 = 3.5`, `1/3 ≈ 0.333…`)."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as context:
        context.prec = 15
        decimal = Decimal(value.numerator) / Decimal(value.denominator)
        exact = Fraction(decimal) == value
    if abs(decimal.adjusted()) >= 15:
        return f"{value} ≈ {decimal:e}"
    return f"{value} {'=' if exact else '≈'} {decimal.normalize():f}"


class CalculatorInput(BaseModel):
    """Arguments of the `calculator` tool."""

    expression: str = Field(description="One arithmetic expression, e.g. 12,345 * 6,789 or (3/4 + 1/8) ^ 2.")


class CalculatorTool(BaseTool):
    """Exact arithmetic on one expression; bad input raises ToolException."""

    name: str = "calculator"
    description: str = (
        "Compute one arithmetic expression exactly. Supports + - * / // % ** (or ^), parentheses, "
        "sqrt, abs, round, min, max, floor, ceil, factorial, gcd, lcm, log, exp, pi, e."
    )
    args_schema: type[BaseModel] = CalculatorInput
    metadata: dict = card_metadata(
        examples=[{"expression": "12,345 * 6,789"}],
        limitations=["Numbers only: no variables, units, equations or words."],
        best_practices=["Put the whole computation in one expression with parentheses."],
    )

    def _run(self, expression: str) -> str:
        try:
            return _format(evaluate(expression, CALCULATOR).value)
        except ExpressionError as exc:
            raise ToolException(str(exc)) from None
