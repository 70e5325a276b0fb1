"""A small, safe grammar for the schema's ``math_cond`` and conditional ``depends_on`` entries.

Nothing here calls ``eval``: conditions are tokenised and parsed by hand, so a schema or a user
cannot run code through them.

``math_cond`` constrains a sampled value relative to numbers or other spec keys::

    math_cond   := clause (("and" | "&&") clause)*
    clause      := OP expr            OP in <, <=, >, >=, ==, !=
                 | "^" NUMBER         the value is a whole power of NUMBER (e.g. "^ 2": 1, 2, 4, 8, ...)
    expr        := term (("+" | "-") term)*
    term        := factor (("*" | "/") factor)*
    factor      := NUMBER | DOTTED_KEY | "(" expr ")" | "-" factor

e.g. ``"<= train.num_epochs"``, ``"> 0 and <= train.optim.lr * 10"``.

A ``depends_on`` entry is either a bare key (the parent must be searched or set in the spec) or a
guard ``KEY == VALUE``, ``KEY != VALUE`` or ``KEY in [V1, V2]`` (the parent must hold such a value),
e.g. ``"train.optim.type == sgd"``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from ..errors import SpecError

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)"
    r"|(?P<op><=|>=|==|!=|&&|[<>^()+\-*/]))"
)
_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
    "!=": lambda a, b: not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}

# ---- expressions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class KeyRef:
    key: str


@dataclass(frozen=True)
class Negate:
    operand: "Expr"


@dataclass(frozen=True)
class Binary:
    op: str
    left: "Expr"
    right: "Expr"


Expr = Union[Number, KeyRef, Negate, Binary]


def expr_keys(expr: Expr) -> set[str]:
    """Spec keys an expression reads."""
    if isinstance(expr, KeyRef):
        return {expr.key}
    if isinstance(expr, Negate):
        return expr_keys(expr.operand)
    if isinstance(expr, Binary):
        return expr_keys(expr.left) | expr_keys(expr.right)
    return set()


def evaluate(expr: Expr, lookup: Callable[[str], Any], *, where: str) -> float:
    """The value of `expr`, reading keys through `lookup` (which raises KeyError when unset)."""
    if isinstance(expr, Number):
        return expr.value
    if isinstance(expr, KeyRef):
        try:
            value = lookup(expr.key)
        except KeyError:
            raise SpecError(f"condition reads {expr.key}, which is neither searched nor set in the spec",
                            key=where, hint=f"set {expr.key} in the spec or with -o") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"condition reads {expr.key}={value!r}, which is not a number", key=where)
        return float(value)
    if isinstance(expr, Negate):
        return -evaluate(expr.operand, lookup, where=where)
    left = evaluate(expr.left, lookup, where=where)
    right = evaluate(expr.right, lookup, where=where)
    if expr.op == "+":
        return left + right
    if expr.op == "-":
        return left - right
    if expr.op == "*":
        return left * right
    if right == 0:
        raise SpecError("condition divides by zero", key=where)
    return left / right


# ---- tokenising and parsing ------------------------------------------------------------------


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match or match.end() == pos:
            raise SpecError(f"cannot read condition {text!r} at position {pos}", key=where,
                            hint="use comparisons like '<= train.num_epochs' joined by 'and'")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = text, where
        self.tokens = _tokens(text, where)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            self.fail("ends too early")
        self.pos += 1
        return token  # type: ignore[return-value]

    def fail(self, why: str) -> None:
        raise SpecError(f"condition {self.text!r} {why}", key=self.where,
                        hint="use comparisons like '<= train.num_epochs' joined by 'and'")

    def expr(self) -> Expr:
        node = self.term()
        while (tok := self.peek()) and tok[1] in ("+", "-"):
            self.take()
            node = Binary(tok[1], node, self.term())
        return node

    def term(self) -> Expr:
        node = self.factor()
        while (tok := self.peek()) and tok[1] in ("*", "/"):
            self.take()
            node = Binary(tok[1], node, self.factor())
        return node

    def factor(self) -> Expr:
        kind, text = self.take()
        if kind == "num":
            return Number(float(text))
        if kind == "key":
            if text in ("and", "in"):
                self.fail(f"has {text!r} where a number or key belongs")
            return KeyRef(text)
        if text == "-":
            return Negate(self.factor())
        if text == "(":
            node = self.expr()
            if self.take()[1] != ")":
                self.fail("has an unclosed '('")
            return node
        self.fail(f"has {text!r} where a number or key belongs")
        raise AssertionError  # unreachable

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)


@dataclass(frozen=True)
class Clause:
    """One ``OP expr`` comparison, or ``^ base`` (a whole power of base)."""

    op: str
    rhs: Expr

    def holds(self, value: float, lookup: Callable[[str], Any], where: str) -> bool:
        bound = evaluate(self.rhs, lookup, where=where)
        if self.op == "^":
            return is_power_of(value, bound)
        return _COMPARATORS[self.op](float(value), bound)


@dataclass(frozen=True)
class MathCondition:
    """A parsed ``math_cond``: every clause must hold."""

    text: str
    clauses: tuple[Clause, ...]

    @property
    def keys(self) -> set[str]:
        return set().union(*(expr_keys(c.rhs) for c in self.clauses)) if self.clauses else set()

    def holds(self, value: float, lookup: Callable[[str], Any], where: str) -> bool:
        return all(c.holds(value, lookup, where) for c in self.clauses)

    def narrow(self, low: float, high: float, lookup: Callable[[str], Any], where: str) -> tuple[float, float]:
        """Tighten [low, high] by the inequality clauses (so sampling lands inside the condition)."""
        for clause in self.clauses:
            if clause.op in ("<", "<="):
                high = min(high, evaluate(clause.rhs, lookup, where=where))
            elif clause.op in (">", ">="):
                low = max(low, evaluate(clause.rhs, lookup, where=where))
            elif clause.op == "==":
                low = high = evaluate(clause.rhs, lookup, where=where)
        return low, high

    def power_base(self) -> float | None:
        for clause in self.clauses:
            if clause.op == "^" and isinstance(clause.rhs, Number):
                return clause.rhs.value
        return None


def is_power_of(value: float, base: float) -> bool:
    if base <= 1 or value <= 0:
        return False
    exponent = round(math.log(value, base))
    return exponent >= 0 and math.isclose(base ** exponent, value, rel_tol=1e-9)


def parse_math_cond(text: str, *, where: str) -> MathCondition:
    """Parse a ``math_cond`` string (see the module docstring); SpecError naming `where` if malformed."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"math_cond must be a non-empty string, got {text!r}", key=where)
    parser = _Parser(text, where)
    clauses = []
    while True:
        kind, op = parser.take()
        if op not in (*_COMPARATORS, "^"):
            parser.fail(f"must start each clause with one of <, <=, >, >=, ==, !=, ^ (found {op!r})")
        rhs = parser.expr()
        if op == "^" and not (isinstance(rhs, Number) and rhs.value > 1):
            parser.fail("needs a number above 1 after '^'")
        clauses.append(Clause(op, rhs))
        if parser.at_end():
            break
        joiner = parser.take()[1]
        if joiner not in ("and", "&&"):
            parser.fail(f"joins clauses with {joiner!r}; use 'and'")
    return MathCondition(text, tuple(clauses))


# ---- depends_on guards -----------------------------------------------------------------------

_GUARD_RE = re.compile(
    r"^\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*"
    r"(?:(?P<op>==|!=|\bin\b)\s*(?P<value>.+?))?\s*$"
)


@dataclass(frozen=True)
class Dependency:
    """A parent key, and optionally the values it must hold for the dependent to be searched."""

    key: str
    op: str | None = None  # None: the parent only has to be searched or set
    values: tuple[str, ...] = ()

    def satisfied(self, present: bool, value: Any) -> bool:
        if not present:
            return False
        if self.op is None:
            return True
        shown = _as_text(value)
        return (shown in self.values) if self.op in ("==", "in") else (shown not in self.values)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_dependency(text: str, *, where: str) -> Dependency:
    """Parse one ``depends_on`` entry: ``key``, ``key == v``, ``key != v`` or ``key in [v1, v2]``."""
    match = _GUARD_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise SpecError(f"depends_on entry {text!r} is not 'key', 'key == value' or 'key in [a, b]'", key=where)
    op, raw = match.group("op"), match.group("value")
    if op is None:
        return Dependency(match.group("key"))
    if op == "in":
        inner = raw.strip()
        if not (inner.startswith("[") and inner.endswith("]")):
            raise SpecError(f"depends_on entry {text!r}: 'in' needs a list like [a, b]", key=where)
        values = tuple(v.strip().strip("'\"") for v in inner[1:-1].split(",") if v.strip())
    else:
        values = (raw.strip().strip("'\""),)
    if not values:
        raise SpecError(f"depends_on entry {text!r} names no value", key=where)
    return Dependency(match.group("key"), op, values)


def lookup_in(values: Mapping[str, Any], spec: Mapping[str, Any]) -> Callable[[str], Any]:
    """A key reader over sampled values first, then the nested spec (KeyError when absent)."""

    def lookup(key: str) -> Any:
        if key in values:
            return values[key]
        node: Any = spec
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(key)
            node = node[part]
        return node

    return lookup
