"""Label and field selectors with Kubernetes syntax, semantics and error texts.

kubectl (``-l``, ``--field-selector``) and client libraries send selectors as query strings, and
agents rely on them to receive only their share of the desired state, so the grammar, the
validation of keys and values and the matching rules follow apimachinery's ``labels`` and
``fields`` packages exactly: a selector that Kubernetes accepts selects the same objects here,
and one it rejects is rejected here with the same explanation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from setpoint.server.errors import BadRequest, Invalid

__all__ = [
    "DEFAULT_FIELDS",
    "FieldSelector",
    "FieldTerm",
    "LabelSelector",
    "Requirement",
    "label_key_errors",
    "label_value_errors",
]

# ---------------------------------------------------------------------------------------------
# Label key and value syntax (apimachinery validation: IsQualifiedName / IsValidLabelValue).
# The texts are Kubernetes' own so that a user who pastes one into a search engine finds help.

_QNAME_FMT: Final = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_RE: Final = re.compile(f"^{_QNAME_FMT}\\Z")
_QNAME_MSG: Final = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
_LABEL_VALUE_FMT: Final = f"({_QNAME_FMT})?"
_LABEL_VALUE_RE: Final = re.compile(f"^{_LABEL_VALUE_FMT}\\Z")
_LABEL_VALUE_MSG: Final = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_LABEL_FMT: Final = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT: Final = f"{_DNS1123_LABEL_FMT}(\\.{_DNS1123_LABEL_FMT})*"
_DNS1123_SUBDOMAIN_RE: Final = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}\\Z")
_DNS1123_SUBDOMAIN_MSG: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_MAX_NAME: Final = 63
_MAX_SUBDOMAIN: Final = 253


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


# The usual key, checked in one step before the detailed reasons are worked out for a bad one.
_VALID_KEY: Final = re.compile(
    f"^(?:(?=[^/]{{1,{_MAX_SUBDOMAIN}}}/){_DNS1123_SUBDOMAIN_FMT}/)?(?=[^/]{{1,{_MAX_NAME}}}\\Z){_QNAME_FMT}\\Z")


# Keys and values already found valid: objects repeat the same few labels, and every write
# checks each of them (a set lookup instead of a regex match). Bounded: past the bound, new ones
# are only not remembered.
_valid_keys: set[str] = set()
_valid_values: set[str] = set()
_REMEMBER = 4096


def label_key_errors(key: str) -> list[str]:
    """Why ``key`` is not a valid label key (empty when it is): ``[prefix/]name``."""
    if key in _valid_keys:
        return []
    if _VALID_KEY.match(key):
        if len(_valid_keys) < _REMEMBER:
            _valid_keys.add(key)
        return []
    errs: list[str] = []
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            if len(prefix) > _MAX_SUBDOMAIN:
                errs.append("prefix part " + _max_len_error(_MAX_SUBDOMAIN))
            if not _DNS1123_SUBDOMAIN_RE.match(prefix):
                errs.append(
                    "prefix part "
                    + _regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com")
                )
    else:
        return [
            "a valid label key "
            + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > _MAX_NAME:
        errs.append("name part " + _max_len_error(_MAX_NAME))
    if not _QNAME_RE.match(name):
        errs.append("name part " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def label_value_errors(value: str) -> list[str]:
    """Why ``value`` is not a valid label value (empty when it is)."""
    if value in _valid_values:
        return []
    if len(value) <= _MAX_NAME and _LABEL_VALUE_RE.match(value):
        if len(_valid_values) < _REMEMBER:
            _valid_values.add(value)
        return []
    errs: list[str] = []
    if len(value) > _MAX_NAME:
        errs.append(_max_len_error(_MAX_NAME))
    if not _LABEL_VALUE_RE.match(value):
        errs.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def _go_quote(s: str) -> str:
    """Quote like Go's %q, which Kubernetes uses for offending values in its messages."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Requirements

EQUALS: Final = "="
DOUBLE_EQUALS: Final = "=="
NOT_EQUALS: Final = "!="
IN: Final = "in"
NOT_IN: Final = "notin"
EXISTS: Final = "exists"
DOES_NOT_EXIST: Final = "!"
GREATER_THAN: Final = "gt"
LESS_THAN: Final = "lt"

_BINARY_OPERATORS: Final = (IN, NOT_IN, EQUALS, DOUBLE_EQUALS, NOT_EQUALS, GREATER_THAN, LESS_THAN)


def _parse_int64(text: str) -> int | None:
    """Go's strconv.ParseInt(s, 10, 64): optional sign, decimal digits only, 64-bit range."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    n = int(text)
    return n if -(2**63) <= n < 2**63 else None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One clause of a label selector; clauses are ANDed.

    ``values`` is sorted and free of duplicates, as Kubernetes keeps it, so that two spellings
    of the same selector compare equal and print identically.
    """

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: ``!=`` and ``notin`` also match objects without the key."""
        op = self.operator
        if op in (IN, EQUALS, DOUBLE_EQUALS):
            val = labels.get(self.key)
            return val is not None and val in self.values
        if op in (NOT_IN, NOT_EQUALS):
            val = labels.get(self.key)
            return val is None or val not in self.values
        if op == EXISTS:
            return self.key in labels
        if op == DOES_NOT_EXIST:
            return self.key not in labels
        if op in (GREATER_THAN, LESS_THAN):
            val = labels.get(self.key)
            if val is None or len(self.values) != 1:
                return False
            have, want = _parse_int64(val), _parse_int64(self.values[0])
            if have is None or want is None:
                return False
            return have > want if op == GREATER_THAN else have < want
        return False

    def __str__(self) -> str:
        op = self.operator
        if op == EXISTS:
            return self.key
        if op == DOES_NOT_EXIST:
            return "!" + self.key
        joined = ",".join(self.values)
        if op in (IN, NOT_IN):
            return f"{self.key} {op} ({joined})"
        symbol = {GREATER_THAN: ">", LESS_THAN: "<"}.get(op, op)
        return f"{self.key}{symbol}{joined}"


def _aggregate(errors: list[str]) -> str:
    """apimachinery's aggregate error text: one error alone, several in brackets."""
    return errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"


def _new_requirement(key: str, operator: str, values: list[str]) -> Requirement:
    """A validated requirement; the checks and texts are those of NewRequirement."""
    errs: list[str] = []
    if kerrs := label_key_errors(key):
        errs.append(f"key: Invalid value: {_go_quote(key)}: {'; '.join(kerrs)}")
    shown = "[]string{" + ", ".join(_go_quote(v) for v in values) + "}"
    if operator in (IN, NOT_IN) and not values:
        errs.append(f"values: Invalid value: {shown}: for 'in', 'notin' operators, values set can't be empty")
    elif operator in (EQUALS, DOUBLE_EQUALS, NOT_EQUALS) and len(values) != 1:
        errs.append(f"values: Invalid value: {shown}: exact-match compatibility requires one single value")
    elif operator in (GREATER_THAN, LESS_THAN):
        if len(values) != 1:
            errs.append(
                f"values: Invalid value: {shown}: for 'Gt', 'Lt' operators, exactly one value is required"
            )
        for i, v in enumerate(values):
            if _parse_int64(v) is None:
                errs.append(
                    f"values[{i}]: Invalid value: {_go_quote(v)}: "
                    "for 'Gt', 'Lt' operators, the value must be an integer"
                )
    for i, v in enumerate(values):
        if verrs := label_value_errors(v):
            errs.append(f"values[{i}][{key}]: Invalid value: {_go_quote(v)}: {'; '.join(verrs)}")
    if errs:
        raise _ParseError(_aggregate(errs))
    return Requirement(key, operator, tuple(sorted(set(values))))


# ---------------------------------------------------------------------------------------------
# Label selector lexer and parser, a transcription of apimachinery's so that edge cases
# (``x in ()``, ``x=``, ``in`` used as a value, error texts) behave identically.

(
    _T_ERROR,
    _T_EOS,
    _T_CLOSE,
    _T_COMMA,
    _T_NOT,
    _T_DEQ,
    _T_EQ,
    _T_GT,
    _T_IDENT,
    _T_IN,
    _T_LT,
    _T_NEQ,
    _T_NOTIN,
    _T_OPEN,
) = range(14)
_STRING_TO_TOKEN: Final = {
    ")": _T_CLOSE,
    ",": _T_COMMA,
    "!": _T_NOT,
    "==": _T_DEQ,
    "=": _T_EQ,
    ">": _T_GT,
    "in": _T_IN,
    "<": _T_LT,
    "!=": _T_NEQ,
    "notin": _T_NOTIN,
    "(": _T_OPEN,
}
_SPECIAL: Final = frozenset("=!(),><")
_WHITESPACE: Final = frozenset(" \t\r\n")
_KEY_AND_OPERATOR, _VALUES = 0, 1


def _lex(text: str) -> list[tuple[int, str]]:
    items: list[tuple[int, str]] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= n:
            items.append((_T_EOS, ""))
            return items
        if text[pos] in _SPECIAL:
            buf = ""
            last: tuple[int, str] | None = None
            while pos < n and text[pos] in _SPECIAL:
                candidate = buf + text[pos]
                tok = _STRING_TO_TOKEN.get(candidate)
                if tok is not None:
                    last = (tok, candidate)
                elif last is not None:
                    break
                buf = candidate
                pos += 1
            items.append(last if last is not None else (_T_ERROR, f"error expected: keyword found '{buf}'"))
        else:
            start = pos
            while pos < n and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
                pos += 1
            word = text[start:pos]
            items.append((_STRING_TO_TOKEN.get(word, _T_IDENT), word))


class _ParseError(Exception):
    pass


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def lookahead(self, context: int) -> tuple[int, str]:
        tok, lit = self.items[self.pos]
        if context == _VALUES and tok in (_T_IN, _T_NOTIN):
            tok = _T_IDENT
        return tok, lit

    def consume(self, context: int) -> tuple[int, str]:
        tok, lit = self.lookahead(context)
        self.pos += 1
        return tok, lit

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self.lookahead(_VALUES)
            if tok in (_T_IDENT, _T_NOT):
                try:
                    reqs.append(self.parse_requirement())
                except _ParseError as e:
                    raise _ParseError(f"unable to parse requirement: {e}") from None
                t, lit2 = self.consume(_VALUES)
                if t == _T_EOS:
                    return reqs
                if t == _T_COMMA:
                    t2, lit3 = self.lookahead(_VALUES)
                    if t2 not in (_T_IDENT, _T_NOT):
                        raise _ParseError(f"found '{lit3}', expected: identifier after ','")
                else:
                    raise _ParseError(f"found '{lit2}', expected: ',' or 'end of string'")
            elif tok == _T_EOS:
                return reqs
            else:
                raise _ParseError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def parse_requirement(self) -> Requirement:
        key, operator = self.parse_key_and_infer_operator()
        if operator in (EXISTS, DOES_NOT_EXIST):
            return _new_requirement(key, operator, [])
        operator = self.parse_operator()
        values = self.parse_values() if operator in (IN, NOT_IN) else self.parse_exact_value()
        return _new_requirement(key, operator, sorted(values))

    def parse_key_and_infer_operator(self) -> tuple[str, str]:
        operator = ""
        tok, lit = self.consume(_VALUES)
        if tok == _T_NOT:
            operator = DOES_NOT_EXIST
            tok, lit = self.consume(_VALUES)
        if tok != _T_IDENT:
            raise _ParseError(f"found '{lit}', expected: identifier")
        if errs := label_key_errors(lit):
            raise _ParseError(f"key: Invalid value: {_go_quote(lit)}: {'; '.join(errs)}")
        t, _ = self.lookahead(_VALUES)
        if t in (_T_EOS, _T_COMMA) and operator != DOES_NOT_EXIST:
            operator = EXISTS
        # "!x=a" returns here with DOES_NOT_EXIST; the caller then trips over the "=".
        return lit, operator

    def parse_operator(self) -> str:
        tok, lit = self.consume(_KEY_AND_OPERATOR)
        op = {
            _T_IN: IN,
            _T_EQ: EQUALS,
            _T_DEQ: DOUBLE_EQUALS,
            _T_GT: GREATER_THAN,
            _T_LT: LESS_THAN,
            _T_NOTIN: NOT_IN,
            _T_NEQ: NOT_EQUALS,
        }.get(tok)
        if op is None:
            raise _ParseError(f"found '{lit}', expected: {', '.join(_BINARY_OPERATORS)}")
        return op

    def parse_values(self) -> set[str]:
        tok, lit = self.consume(_VALUES)
        if tok != _T_OPEN:
            raise _ParseError(f"found '{lit}' expected: '('")
        tok, lit = self.lookahead(_VALUES)
        if tok in (_T_IDENT, _T_COMMA):
            values = self.parse_identifiers_list()
            tok, _ = self.consume(_VALUES)
            if tok != _T_CLOSE:
                raise _ParseError(f"found '{lit}', expected: ')'")
            return values
        if tok == _T_CLOSE:
            self.consume(_VALUES)
            return {""}
        raise _ParseError(f"found '{lit}', expected: ',', ')' or identifier")

    def parse_identifiers_list(self) -> set[str]:
        values: set[str] = set()
        while True:
            tok, lit = self.consume(_VALUES)
            if tok == _T_IDENT:
                values.add(lit)
                tok2, lit2 = self.lookahead(_VALUES)
                if tok2 == _T_COMMA:
                    continue
                if tok2 == _T_CLOSE:
                    return values
                raise _ParseError(f"found '{lit2}', expected: ',' or ')'")
            if tok == _T_COMMA:
                if not values:
                    values.add("")
                tok2, _ = self.lookahead(_VALUES)
                if tok2 == _T_CLOSE:
                    values.add("")
                    return values
                if tok2 == _T_COMMA:
                    values.add("")
                continue
            raise _ParseError(f"found '{lit}', expected: ',', or identifier")

    def parse_exact_value(self) -> set[str]:
        tok, _ = self.lookahead(_VALUES)
        if tok in (_T_EOS, _T_COMMA):
            return {""}
        tok, lit = self.consume(_VALUES)
        if tok == _T_IDENT:
            return {lit}
        raise _ParseError(f"found '{lit}', expected: identifier")


class LabelSelector:
    """An AND of label requirements; the empty selector matches everything.

    Instances are immutable and hashable, so the server can cache parsed selectors of busy
    watchers and index watchers by selector.
    """

    __slots__ = ("_hash", "_nothing", "requirements")

    requirements: tuple[Requirement, ...]

    def __init__(self, requirements: Iterable[Requirement] = (), *, nothing: bool = False) -> None:
        # Sorted by key like Kubernetes, which makes String() and equality order-independent.
        self.requirements = tuple(sorted(requirements, key=lambda r: r.key))
        self._nothing = nothing
        self._hash = hash((self.requirements, nothing))

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse the query-string form (``-l`` in kubectl); bad syntax is the client's fault."""
        try:
            return cls(_Parser(text).parse())
        except _ParseError as e:
            raise BadRequest(str(e)) from None

    @classmethod
    def from_dict(cls, selector: Mapping[str, Any] | None, *, path: str = "selector") -> LabelSelector:
        """Convert the structured ``metav1.LabelSelector`` found inside objects.

        As in Kubernetes, a missing selector (None) matches nothing while an empty one matches
        everything. An object that carries a malformed selector is itself invalid: Invalid (422)
        with every problem as a cause below ``path``, in ValidateLabelSelector's words.
        """
        if selector is None:
            return cls(nothing=True)
        causes: list[tuple[str, str, str]] = []

        def invalid(field: str, value: Any, detail: str) -> None:
            causes.append(("FieldValueInvalid", f"Invalid value: {_shown(value)}: {detail}", field))

        if not isinstance(selector, Mapping):
            invalid(path, selector, "must be an object")
            raise _invalid(causes)
        match_labels = selector.get("matchLabels") or {}
        match_expressions = selector.get("matchExpressions") or []
        reqs: list[Requirement] = []
        lpath = f"{path}.matchLabels"
        if not isinstance(match_labels, Mapping):
            invalid(lpath, match_labels, "must be a map of strings")
            match_labels = {}
        for k, v in match_labels.items():
            for msg in label_key_errors(k):
                invalid(lpath, k, msg)
            if not isinstance(v, str):
                invalid(lpath, v, "must be a string")
                continue
            for msg in label_value_errors(v):
                invalid(lpath, v, msg)
            reqs.append(Requirement(k, EQUALS, (v,)))
        if not isinstance(match_expressions, list):
            invalid(f"{path}.matchExpressions", match_expressions, "must be a list")
            match_expressions = []
        ops = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}
        for i, expr in enumerate(match_expressions):
            epath = f"{path}.matchExpressions[{i}]"
            if not isinstance(expr, Mapping):
                invalid(epath, expr, "must be an object")
                continue
            key, operator, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                invalid(f"{epath}.values", values, "must be a list of strings")
                values = []
            if operator in ("In", "NotIn"):
                if not values:
                    causes.append(
                        (
                            "FieldValueRequired",
                            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                            f"{epath}.values",
                        )
                    )
            elif operator in ("Exists", "DoesNotExist"):
                if values:
                    causes.append(
                        (
                            "FieldValueForbidden",
                            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                            f"{epath}.values",
                        )
                    )
            else:
                invalid(f"{epath}.operator", operator, "not a valid selector operator")
            if not isinstance(key, str):
                invalid(f"{epath}.key", key, "must be a string")
                continue
            for msg in label_key_errors(key):
                invalid(f"{epath}.key", key, msg)
            for j, v in enumerate(values):
                for msg in label_value_errors(v):
                    invalid(f"{epath}.values[{j}]", v, msg)
            if operator in ops:
                reqs.append(Requirement(key, ops[operator], tuple(sorted(set(values)))))
        if causes:
            raise _invalid(causes)
        return cls(reqs)

    @property
    def empty(self) -> bool:
        """True when the selector does not restrict anything (the server may skip matching)."""
        return not self.requirements and not self._nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self._nothing:
            return False
        lbls: Mapping[str, str] = labels or {}
        return all(r.matches(lbls) for r in self.requirements)

    def exact(self, key: str) -> str | None:
        """The single value ``key`` must have, if the selector pins it (for index lookups)."""
        for r in self.requirements:
            if r.key == key:
                if r.operator in (EQUALS, DOUBLE_EQUALS, IN) and len(r.values) == 1:
                    return r.values[0]
                return None
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def __repr__(self) -> str:
        if self._nothing:
            return "LabelSelector(<nothing>)"
        return f"LabelSelector({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSelector):
            return NotImplemented
        return self.requirements == other.requirements and self._nothing == other._nothing

    def __hash__(self) -> int:
        return self._hash


def _shown(value: Any) -> str:
    return _go_quote(value) if isinstance(value, str) else json.dumps(value)


def _invalid(causes: list[tuple[str, str, str]]) -> Invalid:
    return Invalid(_aggregate([f"{field}: {body}" for _, body, field in causes]), causes=causes)


# ---------------------------------------------------------------------------------------------
# Field selectors

DEFAULT_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True, slots=True)
class FieldTerm:
    """``field=value`` (``negate`` False) or ``field!=value``."""

    field: str
    value: str
    negate: bool = False

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
        return f"{self.field}{'!=' if self.negate else '='}{escaped}"


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not backslash-escaped; escapes stay for _unescape to check."""
    if not text:
        return []
    terms: list[str] = []
    start, in_slash = 0, False
    for i, ch in enumerate(text):
        if in_slash:
            in_slash = False
        elif ch == "\\":
            in_slash = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """The first operator wins; ``!=`` and ``==`` are tried before ``=`` at each position."""
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
    return None


def _unescape(value: str) -> str:
    if not any(c in value for c in "\\,="):
        return value
    out: list[str] = []
    in_slash = False
    for ch in value:
        if in_slash:
            if ch not in "\\,=":
                raise BadRequest(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            in_slash = False
        elif ch == "\\":
            in_slash = True
        elif ch in ",=":
            raise BadRequest(f"invalid field selector: unescaped character in value: {ch!r}")
        else:
            out.append(ch)
    if in_slash:
        raise BadRequest("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


_MISSING: Final = object()


def _field_value(obj: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The string form Kubernetes compares against: absent means "", non-scalars never match."""
    cur: Any = obj
    for part in path:
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part, _MISSING)
        if cur is _MISSING or cur is None:
            return ""
    if isinstance(cur, str):
        return cur
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, int):
        return str(cur)
    if isinstance(cur, float):
        return str(int(cur)) if cur.is_integer() else repr(cur)
    return None


class FieldSelector:
    """An AND of ``field=value`` / ``field!=value`` terms over an object's fields.

    Only fields the kind declares selectable may be used (``metadata.name`` and
    ``metadata.namespace`` for every kind), because the server must be able to answer the
    query from what it indexes; anything else is the client's error.
    """

    __slots__ = ("_hash", "_paths", "terms")

    terms: tuple[FieldTerm, ...]

    def __init__(self, terms: Iterable[FieldTerm] = ()) -> None:
        self.terms = tuple(terms)
        self._paths = tuple(tuple(t.field.split(".")) for t in self.terms)
        self._hash = hash(self.terms)

    @classmethod
    def parse(cls, text: str, supported: frozenset[str] = DEFAULT_FIELDS) -> FieldSelector:
        parts = sorted(_split_terms(text))
        terms: list[FieldTerm] = []
        for part in parts:
            if not part.strip():
                continue
            split = _split_term(part)
            if split is None:
                raise BadRequest(f"invalid selector: '{text}'; can't understand '{part}'")
            lhs, op, rhs = split
            field, value = lhs.strip(), _unescape(rhs.strip())
            if field not in supported:
                only = ", ".join(_go_quote(f) for f in sorted(supported))
                raise BadRequest(f"{_go_quote(field)} is not a known field selector: only {only}")
            terms.append(FieldTerm(field, value, negate=op == "!="))
        return cls(terms)

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for term, path in zip(self.terms, self._paths, strict=True):
            have = _field_value(obj, path)
            if (have == term.value) == term.negate:
                return False
        return True

    def exact(self, field: str) -> str | None:
        """The value ``field`` is pinned to with ``=``/``==``, so the server can narrow a list
        or watch to one namespace or one name instead of filtering everything."""
        for term in self.terms:
            if term.field == field and not term.negate:
                return term.value
        return None

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)

    def __repr__(self) -> str:
        return f"FieldSelector({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FieldSelector):
            return NotImplemented
        return self.terms == other.terms

    def __hash__(self) -> int:
        return self._hash
