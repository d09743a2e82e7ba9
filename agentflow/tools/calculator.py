"""The `calculator` tool: exact arithmetic without eval.

Small models copy numbers as they read them (`12,345 × 6,789`, `2^10`), and
float arithmetic turns `0.1 + 0.2` into `0.30000000000000004`. The expression
is normalised, parsed with `ast` and walked node by node over
`fractions.Fraction`, so only arithmetic can run and results are exact.
Exponent and size caps keep `9**9**9` from stalling the agent.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Callable

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

from agentflow.tools.cards import card_metadata

Number = Fraction | float

#: Largest numerator/denominator kept (about 3,900 decimal digits), which also
#: stays under Python's default 4,300-digit int-to-str limit.
MAX_BITS = 13_000
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 1_000
MAX_EXPRESSION_CHARS = 2_000

_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**", "²": "**2", "³": "**3"}

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _sqrt(x: Number) -> Number:
    """Exact root of a perfect-square fraction, a float otherwise."""
    if x < 0:
        raise ToolException("sqrt of a negative number")
    if isinstance(x, Fraction):
        num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num * num == x.numerator and den * den == x.denominator:
            return Fraction(num, den)
    return math.sqrt(x)


def _integer(x: Number, what: str) -> int:
    """The value as an int, or a ToolException naming the function."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise ToolException(f"{what} needs whole numbers, got {_format(x)}")


def _factorial(x: Number) -> Number:
    n = _integer(x, "factorial")
    if not 0 <= n <= MAX_FACTORIAL:
        raise ToolException(f"factorial needs 0 <= n <= {MAX_FACTORIAL}")
    return Fraction(math.factorial(n))


def _round(x: Number, digits: Number = Fraction(0)) -> Number:
    """Round half away from zero, as people and school maths do (Python's round(2.5) is 2)."""
    scale = Fraction(10) ** _integer(digits, "round")
    magnitude = math.floor(abs(Fraction(x)) * scale + Fraction(1, 2))
    return (magnitude if x >= 0 else -magnitude) / scale


def _log(x: Number, base: Number | None = None) -> Number:
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise ToolException("log needs a positive number (and a positive base other than 1)")
    return math.log(x) if base is None else math.log(x, base)


_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": _sqrt,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "floor": lambda x: Fraction(math.floor(x)),
    "ceil": lambda x: Fraction(math.ceil(x)),
    "factorial": _factorial,
    "gcd": lambda *xs: Fraction(math.gcd(*(_integer(x, "gcd") for x in xs))),
    "lcm": lambda *xs: Fraction(math.lcm(*(_integer(x, "lcm") for x in xs))),
    "log": _log,
    "ln": lambda x: _log(x),
    "exp": lambda x: math.exp(x),
}
_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e}


def normalize_expression(expression: str) -> str:
    """Rewrite human notation into Python syntax.

    `×`/`÷`/`^` become operators; a comma between digit groups (`12,345`) is a
    thousands separator unless it sits directly inside a function call's
    parentheses, where it separates arguments (`max(1,234)`).
    """
    for symbol, replacement in _SYMBOLS.items():
        expression = expression.replace(symbol, replacement)
    out: list[str] = []
    call_parens: list[bool] = []
    for i, char in enumerate(expression):
        if char == "(":
            before = expression[:i].rstrip()
            call_parens.append(bool(before) and (before[-1].isalnum() or before[-1] == "_"))
        elif char == ")" and call_parens:
            call_parens.pop()
        elif char == "," and not (call_parens and call_parens[-1]):
            if re.search(r"\d$", expression[:i]) and re.match(r"\d{3}(?!\d)", expression[i + 1 :]):
                continue
        out.append(char)
    return "".join(out).strip()


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression exactly; raise ToolException on anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolException(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    source = normalize_expression(expression)
    if not source:
        raise ToolException("empty expression")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ToolException(f"cannot parse {expression!r}: {exc.msg}") from None
    try:
        return _Evaluator(source).visit(tree.body)
    except ZeroDivisionError:
        raise ToolException("division by zero") from None
    except OverflowError:
        raise ToolException("result too large") from None


class _Evaluator:
    """Walks an expression AST, allowing numbers, arithmetic and whitelisted calls only."""

    def __init__(self, source: str) -> None:
        self.source = source

    def visit(self, node: ast.AST) -> Number:
        value = self._visit(node)
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolException("result is not a finite number")
        if isinstance(value, Fraction) and max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
            raise ToolException("result too large (more than about 3,900 digits)")
        return value

    def _visit(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            # the literal's own text keeps decimals exact: 0.1 is 1/10, not a float
            try:
                return Fraction(ast.get_source_segment(self.source, node) or repr(node.value))
            except ValueError:  # 0x10, 0b101: ints Fraction's parser does not read
                return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](self.visit(node.left), self.visit(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return self._power(self.visit(node.left), self.visit(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise ToolException(f"unknown name {node.id!r}; only numbers, + - * / // % ** and {_function_list()}")
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ToolException(
            f"unsupported syntax {ast.unparse(node)!r}; use numbers, + - * / // % ** and {_function_list()}"
        )

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise ToolException(f"unknown function {ast.unparse(node.func)!r}; available: {_function_list()}")
        args = [self.visit(arg) for arg in node.args]
        try:
            return _FUNCTIONS[node.func.id](*args)
        except TypeError as exc:
            raise ToolException(f"bad arguments to {node.func.id}: {exc}") from None
        except ValueError as exc:
            raise ToolException(f"{node.func.id}: {exc}") from None

    @staticmethod
    def _power(base: Number, exponent: Number) -> Number:
        if isinstance(exponent, Fraction) and exponent.denominator == 1:
            if abs(exponent) > MAX_EXPONENT:
                raise ToolException(f"exponent larger than {MAX_EXPONENT}")
            if isinstance(base, Fraction):
                size = max(base.numerator.bit_length(), base.denominator.bit_length())
                if size * abs(exponent) > MAX_BITS:
                    raise ToolException("result too large (more than about 3,900 digits)")
            return base**exponent
        if base < 0:
            raise ToolException("fractional power of a negative number")
        return float(base) ** float(exponent)


def _function_list() -> str:
    return "functions " + ", ".join(_FUNCTIONS) + " and constants " + ", ".join(_CONSTANTS)


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


def calculate(expression: str) -> str:
    """Evaluate `expression` and format the result for the model."""
    return _format(evaluate(expression))


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
        return calculate(expression)
