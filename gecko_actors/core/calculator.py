"""Safe arithmetic for the built-in ``calculator`` tool.

The expression comes from a model, so it is hostile input. It is never handed to Python to run:
it is parsed with :func:`ast.parse` and the tree is walked against an explicit whitelist (int and
float literals, unary ``+ -``, binary ``+ - * / // % **``). Everything else is refused with a
message that names what was refused, so the model can correct itself.

Arithmetic on Python ints is unbounded, so every operation whose result could be huge
(``**``, ``*``) is checked against :class:`CalculatorLimits` *before* it is computed; results are
checked again afterwards. Float overflow is an error, never ``inf``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from gecko_actors.core.tools import tool
from gecko_actors.exceptions import CalculatorError

Number = int | float

SYNTAX_HINT = "use only numbers, + - * / // % ** and parentheses"
LIMIT_HINT = "use smaller numbers or split the calculation into smaller steps"
ARITHMETIC_HINT = "check the operands of the failing operation"

_CONTEXT_CHARS = 80  # how much of the expression an error carries as context
_SEGMENT_CHARS = 40  # how much of a refused sub-expression a message quotes
_LOG10_2 = math.log10(2)


@dataclass(frozen=True)
class CalculatorLimits:
    """Bounds that keep one expression cheap to parse and evaluate.

    Attributes:
        max_length: characters of the expression.
        max_nodes: numbers and operations in the expression (parentheses do not count).
        max_depth: nesting depth of the expression tree. A chain ``1 + 2 + 3`` nests to the
            left, so a sum of ``n`` terms is ``n`` deep.
        max_exponent: largest ``|b|`` in ``a ** b``.
        max_digits: decimal digits of any int literal or intermediate/final int result.
        max_float_abs: largest ``|x|`` of a float literal or result.
    """

    max_length: int = 500
    max_nodes: int = 200
    # Equal to max_nodes: a flat sum of every allowed term still fits; recursion stays shallow.
    max_depth: int = 200
    max_exponent: int = 1000
    max_digits: int = 1000
    max_float_abs: float = 1e308


class _Refused(Exception):
    """Internal: a refusal, turned into a :class:`CalculatorError` with context by ``evaluate``."""

    def __init__(self, message: str, hint: str = SYNTAX_HINT) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# --- public API ------------------------------------------------------------------------------


def evaluate(expression: str, limits: CalculatorLimits = CalculatorLimits()) -> Number:
    """Evaluate an arithmetic ``expression`` safely.

    Raises:
        CalculatorError: the expression is not a string, empty, too long, not valid syntax,
            uses anything outside the whitelist, exceeds a limit, or divides by zero. The error
            carries ``expression=`` (truncated to 80 characters) as context and a ``hint``.
    """
    try:
        source = _check_input(expression, limits)
        tree = _parse(source)
        _check_tree(tree, source, limits)
        return _compute(tree.body, limits)
    except _Refused as refused:
        raise CalculatorError(
            refused.message, hint=refused.hint, expression=_context(expression)
        ) from None
    except (RecursionError, MemoryError):
        # Only reachable when max_depth is raised beyond what the stack can take.
        raise CalculatorError(
            "expression is nested too deeply to evaluate",
            hint=LIMIT_HINT,
            expression=_context(expression),
        ) from None


def format_result(value: Number) -> str:
    """Render a result: ints exactly, floats with 15 significant digits (``2.0`` -> ``"2"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"format_result expects an int or a float, not {type(value).__name__}")
    if isinstance(value, float):
        # 15 digits hides binary noise such as 0.1 + 0.2 == 0.30000000000000004.
        return f"{value:.15g}"
    return repr(value)


# --- input and parsing -----------------------------------------------------------------------


def _context(expression: object) -> str:
    """The expression as error context, short enough for logs and model messages."""
    if not isinstance(expression, str):
        return f"<{type(expression).__name__}>"
    if len(expression) <= _CONTEXT_CHARS:
        return expression
    return expression[: _CONTEXT_CHARS - 3] + "..."


def _check_input(expression: object, limits: CalculatorLimits) -> str:
    """Type, length and emptiness checks; returns the stripped source."""
    if not isinstance(expression, str):
        raise _Refused(f"the expression must be a string, not {type(expression).__name__}")
    # Length first: everything after it (strip, parse) costs time proportional to it.
    if len(expression) > limits.max_length:
        raise _Refused(
            f"expression is {len(expression)} characters long; the limit is {limits.max_length}",
            LIMIT_HINT,
        )
    source = expression.strip()
    if not source:
        raise _Refused("the expression is empty")
    # Stripped because ast.parse treats leading whitespace as an unexpected indent.
    return source


def _parse(source: str) -> ast.Expression:
    try:
        return ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise _Refused(_syntax_message(exc)) from None
    except ValueError as exc:  # e.g. null bytes, on some Python versions
        raise _Refused(f"syntax error: {exc}") from None
    except (RecursionError, MemoryError):
        # CPython's parser gives up this way on e.g. thousands of nested unary minuses.
        raise _Refused("expression is nested too deeply to parse", LIMIT_HINT) from None


def _syntax_message(exc: SyntaxError) -> str:
    where = ""
    if exc.offset and exc.offset > 0:
        line = f"line {exc.lineno}, " if exc.lineno and exc.lineno > 1 else ""
        where = f" at {line}column {exc.offset}"
    return f"syntax error{where}: {exc.msg}"


# --- whitelist -------------------------------------------------------------------------------

_BINARY_OPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: tuple[type[ast.unaryop], ...] = (ast.UAdd, ast.USub)
_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.LShift: "'<<' operator (bit shift)",
    ast.RShift: "'>>' operator (bit shift)",
    ast.BitAnd: "'&' operator (bitwise and)",
    ast.BitOr: "'|' operator (bitwise or)",
    ast.BitXor: "'^' operator (bitwise xor; write powers as **)",
    ast.MatMult: "'@' operator (matrix multiplication)",
    ast.Invert: "'~' operator (bitwise not)",
    ast.Not: "'not' operator",
}
# Subject and verb of "... not allowed in calculator expressions".
_REFUSED_NODES: dict[type[ast.AST], str] = {
    ast.Name: "names are",
    ast.Attribute: "attributes are",
    ast.Call: "function calls are",
    ast.Subscript: "subscripts are",
    ast.Slice: "slices are",
    ast.Lambda: "lambdas are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are",
    ast.Compare: "comparisons are",
    ast.BoolOp: "boolean operators (and/or) are",
    ast.IfExp: "conditional expressions are",
    ast.JoinedStr: "f-strings are",
    ast.FormattedValue: "f-strings are",
    ast.Starred: "starred expressions are",
    ast.NamedExpr: "assignment expressions (:=) are",
    ast.List: "lists are",
    ast.Tuple: "tuples are",
    ast.Set: "sets are",
    ast.Dict: "dicts are",
    ast.Await: "await expressions are",
    ast.Yield: "yield expressions are",
    ast.YieldFrom: "yield expressions are",
}
_REFUSED_CONSTANTS: dict[type, str] = {
    str: "strings are",
    bytes: "bytes are",
    bool: "booleans are",
    type(None): "None is",
    type(...): "ellipsis (...) is",
    complex: "complex numbers are",
}


def _check_tree(tree: ast.Expression, source: str, limits: CalculatorLimits) -> None:
    """Refuse anything outside the whitelist or the size limits, before computing anything.

    Iterative (explicit stack) so that a deep tree cannot exhaust the Python stack here; the
    depth limit it enforces is what makes the recursive :func:`_compute` safe.
    """
    stack: list[tuple[ast.expr, int]] = [(tree.body, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        _check_node(node, source, limits)
        count += 1
        if count > limits.max_nodes:
            raise _Refused(
                f"expression has more than {limits.max_nodes} numbers and operations; "
                f"the limit is {limits.max_nodes}",
                LIMIT_HINT,
            )
        if depth > limits.max_depth:
            raise _Refused(
                f"expression is nested deeper than the limit {limits.max_depth}", LIMIT_HINT
            )
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
        # Reversed so that the leftmost offender in the source is reported first.
        stack.extend((child, depth + 1) for child in reversed(children))


def _check_node(node: ast.expr, source: str, limits: CalculatorLimits) -> None:
    if isinstance(node, ast.Constant):
        _check_constant(node, source, limits)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY_OPS:
            raise _refused_operator(node.op, node, source)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARY_OPS):
            raise _refused_operator(node.op, node, source)
    else:
        subject = _REFUSED_NODES.get(type(node), f"{type(node).__name__} expressions are")
        raise _not_allowed(subject, node, source)


def _check_constant(node: ast.Constant, source: str, limits: CalculatorLimits) -> None:
    value = node.value
    # type() rather than isinstance(): bool is a subclass of int and must be refused.
    if type(value) is int or type(value) is float:
        _check_number(value, f"the number {_segment(node, source)!r}", limits)
    else:
        subject = _REFUSED_CONSTANTS.get(type(value), f"{type(value).__name__} values are")
        raise _not_allowed(subject, node, source)


def _refused_operator(op: ast.AST, node: ast.expr, source: str) -> _Refused:
    symbol = _SYMBOLS.get(type(op), f"{type(op).__name__} operator")
    return _not_allowed(f"the {symbol} is", node, source)


def _not_allowed(subject: str, node: ast.AST, source: str) -> _Refused:
    """``subject`` is e.g. "names are"; the message quotes the refused source text."""
    return _Refused(f"{subject} not allowed in calculator expressions: {_segment(node, source)!r}")


def _segment(node: ast.AST, source: str) -> str:
    """The source text of ``node``, clipped: messages quote what was refused, not all of it."""
    text = ast.get_source_segment(source, node) or type(node).__name__
    if len(text) > _SEGMENT_CHARS:
        text = text[: _SEGMENT_CHARS - 3] + "..."
    return text


# --- arithmetic ------------------------------------------------------------------------------


def _compute(node: ast.expr, limits: CalculatorLimits) -> Number:
    """Evaluate a tree already accepted by :func:`_check_tree`."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        operand = _compute(node.operand, limits)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _compute(node.left, limits)
        right = _compute(node.right, limits)
        return _apply(type(node.op), left, right, limits)
    # Defence in depth: the whitelist check should make this unreachable.
    raise _Refused(f"{type(node).__name__} expressions are not allowed in calculator expressions")


def _apply(op: type[ast.operator], left: Number, right: Number, limits: CalculatorLimits) -> Number:
    """One binary operation: pre-checks, the operation itself, then the result check."""
    if op is ast.Pow:
        _precheck_power(left, right, limits)
    elif op is ast.Mult:
        _precheck_product(left, right, limits)
    elif op in (ast.Div, ast.FloorDiv, ast.Mod) and right == 0:
        raise _Refused("modulo by zero" if op is ast.Mod else "division by zero", ARITHMETIC_HINT)
    what = f"the result of {_show(left)} {_SYMBOLS[op]} {_show(right)}"
    try:
        result = _BINARY_OPS[op](left, right)
    except ZeroDivisionError:  # only 0 ** negative gets here
        raise _Refused("zero cannot be raised to a negative power", ARITHMETIC_HINT) from None
    except OverflowError:  # float overflow, or an int too large to convert to float
        raise _Refused(f"{what} is too large for a float", LIMIT_HINT) from None
    return _check_result(result, what, limits)


def _precheck_power(base: Number, exponent: Number, limits: CalculatorLimits) -> None:
    if abs(exponent) > limits.max_exponent:
        raise _Refused(
            f"exponent {_show(exponent)} is larger than the limit {limits.max_exponent}"
            if exponent > 0
            else f"exponent {_show(exponent)} is below the limit -{limits.max_exponent}",
            LIMIT_HINT,
        )
    if base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        # Python would return a complex number here.
        raise _Refused(
            f"{_show(base)} ** {_show(exponent)} is not a real number: a negative number "
            "cannot be raised to a fractional power",
            ARITHMETIC_HINT,
        )
    if type(base) is int and type(exponent) is int and exponent > 0 and abs(base) > 1:
        # A lower bound on the digits of base ** exponent, known without computing it.
        digits = math.floor(exponent * math.log10(abs(base))) + 1
        if digits > limits.max_digits:
            raise _Refused(
                f"{_show(base)} ** {exponent} would have {digits} digits; "
                f"the limit is {limits.max_digits}",
                LIMIT_HINT,
            )


def _precheck_product(left: Number, right: Number, limits: CalculatorLimits) -> None:
    if type(left) is not int or type(right) is not int or left == 0 or right == 0:
        return  # float products cannot be huge; overflow is caught afterwards
    # A product of m- and n-digit ints has at least m + n - 1 digits.
    digits = _int_digits(left) + _int_digits(right) - 1
    if digits > limits.max_digits:
        raise _Refused(
            f"the product {_show(left)} * {_show(right)} would have at least {digits} digits; "
            f"the limit is {limits.max_digits}",
            LIMIT_HINT,
        )


def _check_result(result: object, what: str, limits: CalculatorLimits) -> Number:
    if type(result) is int or type(result) is float:
        _check_number(result, what, limits)
        return result
    # Unreachable for whitelisted operands; refuse rather than return e.g. a complex.
    raise _Refused(f"{what} is a {type(result).__name__}, not a real number", ARITHMETIC_HINT)


def _check_number(value: Number, what: str, limits: CalculatorLimits) -> None:
    """Refuse an int with too many digits or a float that overflowed (``what`` names it)."""
    if type(value) is int:
        digits = _int_digits(value)
        if digits > limits.max_digits:
            raise _Refused(
                f"{what} has {digits} digits; the limit is {limits.max_digits}", LIMIT_HINT
            )
    elif not math.isfinite(value) or abs(value) > limits.max_float_abs:
        raise _Refused(
            f"{what} is too large for a float; the limit is ±{limits.max_float_abs:g}",
            LIMIT_HINT,
        )


def _int_digits(value: int) -> int:
    """Exact decimal digits of ``value``, without str() (which is quadratic and itself limited)."""
    value = abs(value)
    if value == 0:
        return 1
    # bit_length gives an upper bound that is exact or one too many.
    upper = int(value.bit_length() * _LOG10_2) + 1
    return upper - 1 if value < 10 ** (upper - 1) else upper


def _show(value: Number) -> str:
    """A number for a message: long ints are described by their size, not printed."""
    if type(value) is int and _int_digits(value) > 20:
        return f"<{_int_digits(value)}-digit number>"
    # Parenthesised so that "(-8) ** 0.5" does not read as -(8 ** 0.5).
    return f"({value!r})" if value < 0 else repr(value)


@tool(name="calculator")
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "(2 + 3) * 4 ** 2".
    """
    return format_result(evaluate(expression))


__all__ = ["CalculatorLimits", "calculator", "evaluate", "format_result"]
