"""Keyword search grammar: parse what a user types into an AST, then into a parameterised SQL predicate.

Grammar (operators are upper-case so that the words "and", "or", "not" inside prompts stay searchable)::

    query    := or_expr
    or_expr  := and_expr ("OR" and_expr)*
    and_expr := not_expr (["AND"] not_expr)*        # juxtaposition means AND
    not_expr := ("NOT" | "-") not_expr | atom        # "-" must touch what it negates: -car, -"red car", -(a OR b)
    atom     := "(" or_expr ")" | WORD | "PHRASE"

Precedence: NOT binds tighter than AND, AND tighter than OR. A term matches when any searched column
*contains* it, case-insensitively (so ``car`` also finds ``cars``); a quoted phrase is one term that may hold
spaces and operator words ("AND" in quotes is a plain word). Straight (") and curly (“ ”) quotes both work;
inside quotes ``\\"`` is a quote and ``\\\\`` a backslash. Text is NFC-normalised so that composed and
decomposed accents match.

Regex mode (``parse(text, regex=True)``) takes the whole text as one regular expression, matched
case-insensitively against each column by DuckDB's RE2 engine (linear time, so no catastrophic backtracking).
The pattern is checked with Python's ``re`` first for a readable error and capped in length.

The user's text never becomes SQL: ``to_sql`` returns a predicate with ``?`` placeholders and the values to bind.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from . import schema

__all__ = [
    "SearchError",
    "Term",
    "Not",
    "And",
    "Or",
    "Regex",
    "Node",
    "parse",
    "to_sql",
    "matches",
    "terms",
    "DEFAULT_COLUMNS",
    "MAX_QUERY_CHARS",
    "MAX_REGEX_CHARS",
]

DEFAULT_COLUMNS = schema.SAMPLE_VOCAB.text  # the samples columns keyword searches look in
MAX_QUERY_CHARS = 2000
MAX_REGEX_CHARS = 500
MAX_DEPTH = 50  # nesting of parentheses / NOT chains; keeps recursion far from Python's limit

_OPERATORS = {"AND", "OR", "NOT"}
_OPEN_QUOTES = {'"': '"', "\u201c": "\u201d", "\u201e": "\u201d"}  # " “ „
_CLOSE_QUOTES = {'"', "\u201d"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SearchError(ValueError):
    """A query the user typed was refused or failed.

    ``position`` is a 0-based character offset into ``text`` (the user's query) or None; ``kind`` says why:
    ``syntax`` (cannot be parsed), ``refused`` (parses, but is not allowed), ``error`` (DuckDB rejected it while
    binding or running) or ``timeout`` (stopped by the time limit).
    """

    def __init__(self, message: str, position: int | None = None, text: str | None = None, kind: str = "syntax"):
        super().__init__(message)
        self.message = message
        self.position = position
        self.text = text
        self.kind = kind

    def caret(self) -> str:
        """The offending text with a caret under the problem, for monospace display."""
        if self.text is None or self.position is None:
            return self.text or ""
        lines = self.text.split("\n")
        offset = 0
        for line in lines:
            if self.position <= offset + len(line):
                col = self.position - offset
                return f"{line}\n{' ' * col}^"
            offset += len(line) + 1
        return f"{lines[-1]}\n{' ' * len(lines[-1])}^"

    def __str__(self) -> str:
        where = f" (at character {self.position + 1})" if self.position is not None else ""
        return f"{self.message}{where}"


# ---------------------------------------------------------------------------------------------------- the AST


@dataclass(frozen=True)
class Term:
    text: str  # NFC-normalised, as typed (case is ignored when matching)
    phrase: bool = False
    position: int = 0


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Regex:
    pattern: str


Node = Term | Not | And | Or | Regex


# ---------------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # WORD, PHRASE, AND, OR, NOT, MINUS, LPAREN, RPAREN
    text: str
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "(":
            tokens.append(_Token("LPAREN", ch, i))
            i += 1
        elif ch == ")":
            tokens.append(_Token("RPAREN", ch, i))
            i += 1
        elif ch in _OPEN_QUOTES:
            start, i = i, i + 1
            closing = {_OPEN_QUOTES[ch], '"'} if ch != '"' else {'"', "\u201d"}
            buf: list[str] = []
            while i < n and text[i] not in closing:
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\\u201c\u201d':
                    i += 1
                buf.append(text[i])
                i += 1
            if i >= n:
                raise SearchError("unclosed quote: add the closing \"", start, text)
            i += 1
            # line breaks and tabs in a phrase read as spaces (a phrase never spans two searched columns)
            phrase = "".join(" " if c.isspace() else c for c in buf)
            if not phrase.strip():
                raise SearchError("empty phrase: put words between the quotes", start, text)
            tokens.append(_Token("PHRASE", phrase, start))
        elif ch in _CLOSE_QUOTES:
            raise SearchError("closing quote without an opening one", i, text)
        elif ch == "-":
            # a minus that starts a token negates what follows it; inside a word (t-shirt) it is just a character
            if i + 1 >= n or text[i + 1].isspace() or text[i + 1] == ")":
                raise SearchError("'-' must be followed directly by a term, e.g. -car", i, text)
            tokens.append(_Token("MINUS", ch, i))
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in '()"\u201c\u201d\u201e':
                i += 1
            word = text[start:i]
            kind = word if word in _OPERATORS else "WORD"
            tokens.append(_Token(kind, word, start))
    return tokens


# ---------------------------------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str, tokens: list[_Token]):
        self.text = text
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, position: int | None = None) -> SearchError:
        return SearchError(message, len(self.text) if position is None else position, self.text)

    def parse(self) -> Node:
        node = self.or_expr()
        tok = self.peek()
        if tok is not None:
            if tok.kind == "RPAREN":
                raise self.error("unbalanced ')': no '(' opens it", tok.position)
            raise self.error(f"unexpected {tok.text!r}", tok.position)
        return node

    def or_expr(self) -> Node:
        children = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.take()
            self.expect_operand(tok)
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_expr(self) -> Node:
        children = [self.not_expr()]
        while (tok := self.peek()) is not None and tok.kind not in {"OR", "RPAREN"}:
            if tok.kind == "AND":
                self.take()
                self.expect_operand(tok)
            children.append(self.not_expr())
        return children[0] if len(children) == 1 else And(tuple(children))

    def not_expr(self) -> Node:
        tok = self.peek()
        if tok is not None and tok.kind in {"NOT", "MINUS"}:
            self.take()
            self.expect_operand(tok)
            self.enter(tok)
            child = self.not_expr()
            self.depth -= 1
            return Not(child)
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.error("the query ends where a term was expected")
        if tok.kind == "LPAREN":
            self.take()
            if (nxt := self.peek()) is not None and nxt.kind == "RPAREN":
                raise self.error("empty parentheses", tok.position)
            self.enter(tok)
            node = self.or_expr()
            self.depth -= 1
            close = self.peek()
            if close is None or close.kind != "RPAREN":
                raise self.error("unbalanced '(': add the closing ')'", tok.position)
            self.take()
            return node
        if tok.kind in {"WORD", "PHRASE"}:
            self.take()
            return Term(unicodedata.normalize("NFC", tok.text), phrase=tok.kind == "PHRASE", position=tok.position)
        if tok.kind == "RPAREN":
            raise self.error("unbalanced ')': no '(' opens it", tok.position)
        raise self.error(f"{tok.text!r} needs a term before it", tok.position)

    def expect_operand(self, op: _Token) -> None:
        nxt = self.peek()
        if nxt is None or nxt.kind in {"AND", "OR", "RPAREN"}:
            raise self.error(f"dangling {op.text}: a term must follow it (quote it to search the word)", op.position)

    def enter(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} levels deep", tok.position)


def parse(text: str, regex: bool = False) -> Node:
    """Parse a keyword query (or, with ``regex=True``, one regular expression). Raises ``SearchError``."""
    if not isinstance(text, str):
        raise SearchError(f"a query must be text, not {type(text).__name__}")
    if "\x00" in text:
        raise SearchError("the query contains a NUL character", text.index("\x00"), text)
    if regex:
        return Regex(_check_regex(text))
    if len(text) > MAX_QUERY_CHARS:
        raise SearchError(f"the query is longer than {MAX_QUERY_CHARS} characters", MAX_QUERY_CHARS, text)
    if not text.strip():
        raise SearchError("empty query: type one or more words", 0, text)
    tokens = _tokenize(text)
    return _Parser(text, tokens).parse()


def _check_regex(pattern: str) -> str:
    if not pattern:
        raise SearchError("empty regular expression", 0, pattern)
    if len(pattern) > MAX_REGEX_CHARS:
        raise SearchError(f"the regular expression is longer than {MAX_REGEX_CHARS} characters", MAX_REGEX_CHARS, pattern)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise SearchError(f"invalid regular expression: {exc.msg}", exc.pos, pattern) from None
    return unicodedata.normalize("NFC", pattern)


# ---------------------------------------------------------------------------------------------------- SQL


def to_sql(node: Node, columns: tuple[str, ...] | list[str] = DEFAULT_COLUMNS, lowered: bool = False) -> tuple[str, list]:
    """A DuckDB predicate for ``node`` with ``?`` placeholders, and the parameters to bind, in order.

    ``columns`` are column names (identifiers we control, never user text). A term matches when any of them
    contains it; NULL columns never match. With ``lowered=True`` the columns already hold NFC-normalised,
    lower-cased, non-NULL text (a precomputed search column), which saves the per-row work.
    """
    cols = tuple(columns)
    if not cols:
        raise ValueError("to_sql needs at least one column")
    for col in cols:
        if not _IDENT.match(col):
            raise ValueError(f"invalid column name {col!r}: columns must be plain identifiers")
    params: list = []
    sql = _emit(node, cols, lowered, params)
    return sql, params


def _emit(node: Node, cols: tuple[str, ...], lowered: bool, params: list) -> str:
    if isinstance(node, Term):
        parts = []
        for col in cols:
            if lowered:  # a precomputed search column, never NULL
                parts.append(f'contains("{col}", lower(?))')
            else:
                parts.append(f'coalesce(contains(lower(nfc_normalize("{col}")), lower(?)), false)')
            params.append(node.text)
        return "(" + " OR ".join(parts) + ")"
    if isinstance(node, Regex):
        parts = []
        for col in cols:
            parts.append(f"coalesce(regexp_matches(\"{col}\", ?, 'i'), false)")
            params.append(node.pattern)
        return "(" + " OR ".join(parts) + ")"
    if isinstance(node, Not):
        return f"(NOT {_emit(node.child, cols, lowered, params)})"
    if isinstance(node, And | Or):
        glue = " AND " if isinstance(node, And) else " OR "
        return "(" + glue.join(_emit(c, cols, lowered, params) for c in node.children) + ")"
    raise TypeError(f"not a keyword AST node: {node!r}")


# ---------------------------------------------------------------------------------------------------- Python


def matches(node: Node, texts: str | list[str | None] | tuple) -> bool:
    """Evaluate ``node`` in Python against one text or several column values (the reference semantics)."""
    values = [texts] if isinstance(texts, str) else list(texts)
    folded = [unicodedata.normalize("NFC", v).lower() for v in values if v is not None]
    return _eval(node, folded)


def _eval(node: Node, folded: list[str]) -> bool:
    if isinstance(node, Term):
        needle = node.text.lower()
        return any(needle in v for v in folded)
    if isinstance(node, Regex):
        rx = re.compile(node.pattern, re.IGNORECASE)
        return any(rx.search(v) for v in folded)
    if isinstance(node, Not):
        return not _eval(node.child, folded)
    if isinstance(node, And):
        return all(_eval(c, folded) for c in node.children)
    if isinstance(node, Or):
        return any(_eval(c, folded) for c in node.children)
    raise TypeError(f"not a keyword AST node: {node!r}")


def terms(node: Node) -> list[str]:
    """The positive terms of a query (not under NOT), e.g. to highlight them in results."""
    if isinstance(node, Term):
        return [node.text]
    if isinstance(node, And | Or):
        return [t for c in node.children for t in terms(c)]
    return []
