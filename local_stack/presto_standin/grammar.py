"""Syntax check of every statement against a real Presto-family grammar, before translation.

Why: sqlglot, which translates Presto SQL for DuckDB, is lenient by design: it parsed
``GROUP BY o.orderkey,, o.orderdate``, ``SELECT a, b, FROM t``, ``JOIN t2`` without ``ON`` and
``IN ()``, all of which Presto rejects. A query the stand-in runs must be one Presto parses.

Grammar: ANTLR's ``SqlBase.g4`` of Trino 422 (trinodb/trino, tag 422,
``core/trino-parser/src/main/antlr4/io/trino/sql/parser/SqlBase.g4``; Presto's own parser is
the same lineage, prestodb/presto ``presto-parser/src/main/antlr4/com/facebook/presto/sql/
parser/SqlBase.g4``), as the Python parser that the PyPI package ``trino-query-parser`` 0.422.7
generated from it with ANTLR 4.13.0 (``trino_query_parser/SqlBase.g4`` in the wheel).

How it is run mirrors prestodb's ``SqlParser.invokeParser``
(``presto-parser/src/main/java/com/facebook/presto/sql/parser/SqlParser.java``):

* the lexer reads a case-insensitive view of the text (``CaseInsensitiveStream``: keywords are
  upper case in the grammar; the text itself is not changed, so columns stay exact);
* rule ``singleStatement`` (one statement, then end of input: a trailing ``;`` is an error);
* SLL prediction first with a bail-out strategy, LL on failure (same result, faster);
* the ``PostProcessor`` rules: backquoted identifiers and identifiers starting with a digit are
  errors with Presto's messages;
* a syntax error is reported as ``line L:C: mismatched input 'X'. Expecting: ...`` where the
  expected list is computed like Presto's ``ErrorHandler`` (same file's directory,
  ``ErrorHandler.java``): walk the ATN from the failing state, follow the path that consumed
  most input, name rules ``expression``/``booleanExpression``/``valueExpression``/
  ``primaryExpression`` as ``<expression>``, ``identifier`` as ``<identifier>``, ``string``,
  ``query``, ``type`` likewise, ``INTEGER_VALUE`` as ``<integer>``, and skip ``nonReserved``.

Known differences from prestodb's grammar (Trino's is a near superset): Trino-only syntax such
as ``MATCH_RECOGNIZE``, ``JSON_*`` or ``WINDOW`` clauses parses here and is then refused by the
translator or DuckDB (``NOT_SUPPORTED``), never run differently.

Cost (2-core machine): about 0.5 s once per process to build the parser's caches (done by
:func:`warm_up` when the stand-in starts); then about 2 ms for the sensor's query and 20 ms for
``training.sql``. Parsing holds a lock: ANTLR's Python runtime shares its DFA caches between
parsers without locking.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.atn.ATNState import ATNState, RuleStopState
from antlr4.atn.PredictionMode import PredictionMode
from antlr4.atn.Transition import NotSetTransition, RuleTransition, WildcardTransition
from antlr4.error.ErrorListener import ErrorListener
from antlr4.error.Errors import NoViableAltException, ParseCancellationException
from antlr4.error.ErrorStrategy import BailErrorStrategy, DefaultErrorStrategy
from antlr4.tree.Tree import ParseTreeWalker
from trino_query_parser.SqlBaseLexer import SqlBaseLexer
from trino_query_parser.SqlBaseListener import SqlBaseListener
from trino_query_parser.SqlBaseParser import SqlBaseParser

from .errors import SYNTAX_ERROR, PrestoError

PARSING_EXCEPTION = "com.facebook.presto.sql.parser.ParsingException"

_P = SqlBaseParser
_SPECIAL_RULES = {
    _P.RULE_expression: "<expression>",
    _P.RULE_booleanExpression: "<expression>",
    _P.RULE_valueExpression: "<expression>",
    _P.RULE_primaryExpression: "<expression>",
    _P.RULE_identifier: "<identifier>",
    _P.RULE_string: "<string>",
    _P.RULE_query: "<query>",
    _P.RULE_type: "<type>",
}
_SPECIAL_TOKENS = {SqlBaseLexer.INTEGER_VALUE: "<integer>"}
_IGNORED_RULES = {_P.RULE_nonReserved}
# Bound on the error analysis (a breadth-first walk of the ATN); beyond it ANTLR's own
# message is used. Typical errors need a few thousand steps.
_MAX_STEPS = 200_000
_LOCK = threading.Lock()


@dataclass
class _Failure(Exception):
    message: str
    line: int
    column: int  # 0-based, as ANTLR reports it


class _CaseInsensitiveStream(InputStream):
    """The text as the lexer sees it: ASCII letters upper-cased (Presto's CaseInsensitiveStream)."""

    def LA(self, offset: int) -> int:
        char = super().LA(offset)
        return char - 32 if 97 <= char <= 122 else char


class _LexerErrors(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        raise _Failure(msg, line, column)


class _ParserErrors(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        expected = _expected(recognizer, e)
        if expected is not None:
            msg = f"mismatched input '{offendingSymbol.text}'. Expecting: {expected}"
        raise _Failure(msg, line, column)


class _PostProcessor(SqlBaseListener):
    """Presto's ``SqlParser.PostProcessor`` checks that the grammar itself does not make."""

    def exitBackQuotedIdentifier(self, ctx):
        token = ctx.BACKQUOTED_IDENTIFIER().getSymbol()
        raise _Failure(
            "backquoted identifiers are not supported; use double quotes to quote identifiers",
            token.line,
            token.column,
        )

    def exitDigitIdentifier(self, ctx):
        token = ctx.DIGIT_IDENTIFIER().getSymbol()
        raise _Failure(
            "identifiers must not start with a digit; surround the identifier with double quotes",
            token.line,
            token.column,
        )


def check_statement(sql: str) -> None:
    """Raise Presto's ``SYNTAX_ERROR`` (with line and column) unless ``sql`` is one statement
    that Presto's grammar parses."""
    with _LOCK:
        try:
            _parse(sql)
        except _Failure as failure:
            raise PrestoError(
                SYNTAX_ERROR,
                failure.message,
                line=failure.line,
                column=failure.column + 1,
                failure_type=PARSING_EXCEPTION,
            ) from None
        except RecursionError:
            raise PrestoError(
                SYNTAX_ERROR,
                "statement is too large (stack overflow while parsing)",
                failure_type=PARSING_EXCEPTION,
            ) from None


def warm_up() -> None:
    """Build the parser's prediction caches once (about half a second) before queries arrive."""
    check_statement(
        "SELECT a.x, sum(b.y * (1 - b.z)) AS s, CASE WHEN min(b.d) > DATE '1996-01-01' THEN 1 "
        "ELSE 0 END FROM c.s.t AS a JOIN c.s.u AS b ON b.k = a.k WHERE a.d >= DATE '1996-01-01' "
        "AND a.d < DATE '1997-01-01' GROUP BY a.x ORDER BY a.x LIMIT 10"
    )


def _parse(sql: str) -> None:
    lexer = SqlBaseLexer(_CaseInsensitiveStream(sql))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_LexerErrors())
    tokens = CommonTokenStream(lexer)
    parser = SqlBaseParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(_ParserErrors())
    parser._interp.predictionMode = PredictionMode.SLL
    parser._errHandler = BailErrorStrategy()
    try:
        tree = parser.singleStatement()
    except ParseCancellationException:
        # SLL could not decide (or the input is wrong): redo with full LL to get the real answer.
        tokens.seek(0)
        parser.reset()
        parser._interp.predictionMode = PredictionMode.LL
        parser._errHandler = DefaultErrorStrategy()
        tree = parser.singleStatement()
    ParseTreeWalker.DEFAULT.walk(_PostProcessor(), tree)


def _expected(parser: SqlBaseParser, error: Exception | None) -> str | None:
    """What Presto's ErrorHandler would list as expected, or None if the walk gives up."""
    atn = parser.atn
    if error is not None and getattr(error, "offendingState", -1) >= 0:
        state = atn.states[error.offendingState]
        token = (
            error.startToken if isinstance(error, NoViableAltException) else error.offendingToken
        )
        context = error.ctx
    else:
        state, token, context = atn.states[parser.state], parser.getCurrentToken(), parser._ctx
    callers = _call_stack(atn, context)
    candidates = _walk(atn, parser.getTokenStream(), state, token.tokenIndex, callers)
    if not candidates:
        return None
    return ", ".join(sorted(candidates[max(candidates)]))


def _call_stack(atn, context) -> tuple | None:
    frames = []
    while context is not None and context.invokingState != -1:
        frames.append(atn.states[context.invokingState].transitions[0].followState)
        context = context.parentCtx
    stack = None
    for follow in reversed(frames):
        stack = (follow, stack)
    return stack


def _walk(atn, stream, start, token_index: int, callers) -> dict[int, set[str]]:
    """Simulate the ATN from ``start`` over the remaining tokens; candidate names by the token
    index where each path stopped."""
    candidates: dict[int, set[str]] = {}
    queue = deque([(start, token_index, callers)])
    seen = set()
    steps = 0
    while queue:
        steps += 1
        if steps > _MAX_STEPS:
            return {}
        item = queue.popleft()
        if item in seen:
            continue
        seen.add(item)
        state, index, caller = item
        if state.stateType in (ATNState.BLOCK_START, ATNState.RULE_START):
            if state.ruleIndex in _SPECIAL_RULES:
                candidates.setdefault(index, set()).add(_SPECIAL_RULES[state.ruleIndex])
                continue
            if state.ruleIndex in _IGNORED_RULES:
                continue
        if isinstance(state, RuleStopState):
            if caller is not None:
                queue.append((caller[0], index, caller[1]))
            else:
                candidates.setdefault(index, set()).add("<EOF>")
            continue
        current = stream.get(index).type
        for transition in state.transitions:
            if isinstance(transition, RuleTransition):
                queue.append((transition.target, index, (transition.followState, caller)))
            elif transition.isEpsilon:
                queue.append((transition.target, index, caller))
            elif isinstance(transition, WildcardTransition | NotSetTransition):
                continue  # the grammar's parser rules use neither
            elif current in transition.label:
                queue.append((transition.target, index + 1, caller))
            else:
                candidates.setdefault(index, set()).update(_names(transition.label))
    return candidates


def _names(labels) -> set[str]:
    names = set()
    for token_type in labels:
        if token_type == Token.EOF:
            names.add("<EOF>")
        elif token_type in _SPECIAL_TOKENS:
            names.add(_SPECIAL_TOKENS[token_type])
        else:
            literal = (
                SqlBaseParser.literalNames[token_type]
                if token_type < len(SqlBaseParser.literalNames)
                else "<INVALID>"
            )
            names.add(
                literal if literal != "<INVALID>" else SqlBaseParser.symbolicNames[token_type]
            )
    return names
