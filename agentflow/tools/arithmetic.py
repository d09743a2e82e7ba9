"""Exact arithmetic on expressions a model writes, without eval.

The `calculator` tool and the Game-of-24 scorer need the same thing with different
allowances: the calculator takes `12,345 × 6,789`, `2^10` and `sqrt(2)`; a Game-of-24
answer may only combine whole numbers with + - * /. `Rules` says what is allowed
(`CALCULATOR`, `FOUR_OPERATIONS`); anything else raises `ExpressionError` with a reason.

The expression is normalised, parsed with `ast` and walked node by node over
`fractions.Fraction`, so only arithmetic runs and results are exact: 0.1 + 0.2 is 3/10
and 8/(3-8/3) is exactly 24. simpleeval 1.0.8, the usual library for safe expressions,
computes with floats (it gives 0.30000000000000004 for 0.1 + 0.2 and
1.2345678901234567e+19 for 12345678901234567890*3/3) and does not report which numbers
an expression used, so it can back neither the exact calculator nor the 24 check.
Caps on literals, exponents, results and nesting make hostile input such as `9**9**9`,
`1e999999999` or a 1,000-term sum fail at once instead of stalling a rollout.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

Number = Fraction | float

#: Largest numerator/denominator kept (about 3,900 decimal digits), which also
#: stays under Python's default 4,300-digit int-to-str limit.
MAX_BITS = 13_000
MAX_DIGITS = 3_900
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 1_000
MAX_EXPRESSION_CHARS = 2_000

_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**", "²": "**2", "³": "**3"}


class ExpressionError(ValueError):
    """The text is not arithmetic the rules allow, or its value cannot be computed."""


def _power(base: Number, exponent: Number) -> Number:
    """Exact for whole exponents; refused before computing when the result would be huge."""
    if isinstance(exponent, Fraction) and exponent.denominator == 1:
        if abs(exponent) > MAX_EXPONENT:
            raise ExpressionError(f"exponent larger than {MAX_EXPONENT}")
        if isinstance(base, Fraction) and _bits(base) * abs(exponent) > MAX_BITS:
            raise ExpressionError("result too large (more than about 3,900 digits)")
        return base**exponent
    if base < 0:
        raise ExpressionError("fractional power of a negative number")
    return float(base) ** float(exponent)


_OPERATORS: dict[type[ast.operator], tuple[str, Callable[[Number, Number], Number]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", _power),
}


@dataclass(frozen=True)
class Rules:
    """What an expression may contain besides numbers and parentheses."""

    operators: frozenset[str]
    """Binary operators, from + - * / // % **."""
    signs: bool = True
    """Unary + and -, as in `-(3 - 5)`."""
    whole_literals: bool = False
    """Numbers must be written as plain whole numbers: no 2.5, 1e3, 0x10 or 1_000."""
    functions: Mapping[str, Callable[..., Number]] = field(default_factory=dict)
    constants: Mapping[str, Number] = field(default_factory=dict)

    def describe(self) -> str:
        """What is allowed, for error messages a model reads and can act on."""
        parts = [
            "whole numbers" if self.whole_literals else "numbers",
            " ".join(symbol for symbol, _ in _OPERATORS.values() if symbol in self.operators),
        ]
        if self.functions:
            parts.append("functions " + ", ".join(self.functions))
        if self.constants:
            parts.append("constants " + ", ".join(self.constants))
        return ", ".join(parts[:-1]) + " and " + parts[-1]


class Evaluation(NamedTuple):
    """An expression's value (exact, unless a root, log or exp made it a float) and the
    numbers written in it, left to right."""

    value: Number
    literals: tuple[Fraction, ...]


def evaluate(expression: str, rules: Rules) -> Evaluation:
    """Evaluate `expression` exactly under `rules`; ExpressionError on anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    source = normalize_expression(expression)
    if not source:
        raise ExpressionError("empty expression")
    evaluator = _Evaluator(source, rules)
    try:
        value = evaluator.visit(ast.parse(source, mode="eval").body)
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse {expression!r}: {exc.msg}") from None
    except ZeroDivisionError:
        raise ExpressionError("division by zero") from None
    except OverflowError:
        raise ExpressionError("result too large") from None
    except RecursionError:
        raise ExpressionError("expression nested too deeply; split it into smaller steps") from None
    return Evaluation(value, tuple(evaluator.literals))


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


class _Evaluator:
    """Walks an expression AST, allowing only what `rules` allows; records the literals it reads."""

    def __init__(self, source: str, rules: Rules) -> None:
        self.source = source
        self.rules = rules
        self.literals: list[Fraction] = []

    def visit(self, node: ast.AST) -> Number:
        value = self._visit(node)
        if isinstance(value, float) and not math.isfinite(value):
            raise ExpressionError("result is not a finite number")
        if isinstance(value, Fraction) and _bits(value) > MAX_BITS:
            raise ExpressionError("result too large (more than about 3,900 digits)")
        return value

    def _visit(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return self._literal(node)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            symbol, apply = _OPERATORS[type(node.op)]
            if symbol in self.rules.operators:
                return apply(self.visit(node.left), self.visit(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and self.rules.signs:
            value = self.visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name):
            if node.id in self.rules.constants:
                return self.rules.constants[node.id]
            raise ExpressionError(f"unknown name {node.id!r}; use {self.rules.describe()}")
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ExpressionError(f"unsupported syntax {ast.unparse(node)!r}; use {self.rules.describe()}")

    def _literal(self, node: ast.Constant) -> Fraction:
        """The literal's own text keeps decimals exact: 0.1 is 1/10, not the float nearest it."""
        text = ast.get_source_segment(self.source, node) or repr(node.value)
        if self.rules.whole_literals and not text.isdigit():
            raise ExpressionError(f"{text} is not a whole number; use {self.rules.describe()}")
        text = text.replace("_", "")  # 1_000.5: Fraction reads underscores only from Python 3.11
        exponent = text.lower().partition("e")[2] if isinstance(node.value, float) else ""
        if exponent and abs(int(exponent)) > MAX_DIGITS:
            # Fraction("1e999999999") would build a billion-digit integer first
            raise ExpressionError(f"number {text} out of range (exponent beyond ±{MAX_DIGITS})")
        try:
            value = Fraction(text)
        except ValueError:  # 0x10, 0b101: ints Fraction's parser does not read
            value = Fraction(node.value)
        self.literals.append(value)
        return value

    def _call(self, node: ast.Call) -> Number:
        function = self.rules.functions.get(node.func.id) if isinstance(node.func, ast.Name) else None
        if function is None or node.keywords:
            raise ExpressionError(f"unknown function {ast.unparse(node.func)!r}; use {self.rules.describe()}")
        args = [self.visit(arg) for arg in node.args]
        try:
            return function(*args)
        except ExpressionError:
            raise
        except TypeError as exc:
            raise ExpressionError(f"bad arguments to {node.func.id}: {exc}") from None
        except ValueError as exc:
            raise ExpressionError(f"{node.func.id}: {exc}") from None


def _bits(value: Fraction) -> int:
    return max(value.numerator.bit_length(), value.denominator.bit_length())


# --------------------------------------------------------------------------- calculator functions


def _sqrt(x: Number) -> Number:
    """Exact root of a perfect-square fraction, a float otherwise."""
    if x < 0:
        raise ExpressionError("sqrt of a negative number")
    if isinstance(x, Fraction):
        num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num * num == x.numerator and den * den == x.denominator:
            return Fraction(num, den)
    return math.sqrt(x)


def _integer(x: Number, what: str) -> int:
    """The value as an int, or an ExpressionError naming the function."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise ExpressionError(f"{what} needs whole numbers, got {float(x):g}")


def _factorial(x: Number) -> Number:
    n = _integer(x, "factorial")
    if not 0 <= n <= MAX_FACTORIAL:
        raise ExpressionError(f"factorial needs 0 <= n <= {MAX_FACTORIAL}")
    return Fraction(math.factorial(n))


def _round(x: Number, digits: Number = Fraction(0)) -> Number:
    """Round half away from zero, as people and school maths do (Python's round(2.5) is 2)."""
    places = _integer(digits, "round")
    if abs(places) > MAX_DIGITS:
        raise ExpressionError(f"round needs between -{MAX_DIGITS} and {MAX_DIGITS} digits")
    scale = Fraction(10) ** places
    magnitude = math.floor(abs(Fraction(x)) * scale + Fraction(1, 2))
    return (magnitude if x >= 0 else -magnitude) / scale


def _log(x: Number, base: Number | None = None) -> Number:
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise ExpressionError("log needs a positive number (and a positive base other than 1)")
    return math.log(x) if base is None else math.log(x, base)


CALCULATOR = Rules(
    operators=frozenset({"+", "-", "*", "/", "//", "%", "**"}),
    functions={
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
    },
    constants={"pi": math.pi, "e": math.e},
)
"""The calculator tool's arithmetic: exact where it can be, floats for roots, logs and exp."""

FOUR_OPERATIONS = Rules(operators=frozenset({"+", "-", "*", "/"}), signs=False, whole_literals=True)
"""Whole numbers combined with + - * / and parentheses: the Game of 24's basic operations."""
