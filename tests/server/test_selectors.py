"""Label and field selectors behave as kube-apiserver's: syntax, matching and error texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from setpoint.server.errors import BadRequest, Invalid
from setpoint.server.selectors import (
    DEFAULT_FIELDS,
    FieldSelector,
    LabelSelector,
    label_key_errors,
    label_value_errors,
)

# ---------------------------------------------------------------------------------------------
# Label selector syntax


@pytest.mark.parametrize(
    "text",
    ["x=a,y=b,z=c", "", "x!=a,y=b", "x=", "x= ", "x=,z= ", "x= ,z= ", "!x", "x>1", "x>1,z<5"],
)
def test_kubernetes_good_selectors_reprint_without_spaces(text: str) -> None:
    # The same table as apimachinery's TestSelectorParse: String() is the input minus spaces.
    assert str(LabelSelector.parse(text)) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["x=a||y=b", "x==a==b", "!x=a", "x<a"])
def test_kubernetes_bad_selectors_are_rejected(text: str) -> None:
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse(text)
    assert exc.value.code == 400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("x==a==b", "found '==', expected: ',' or 'end of string'"),
        ("!x=a", "found '=', expected: ',' or 'end of string'"),
        ("x,", "found '', expected: identifier after ','"),
        (",x", "found ',', expected: !, identifier, or 'end of string'"),
        ("x in a", "unable to parse requirement: found 'a' expected: '('"),
        ("x in (a b)", "unable to parse requirement: found 'b', expected: ',' or ')'"),
        ("x in (a,=)", "unable to parse requirement: found '=', expected: ',', or identifier"),
        ("x in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
        ("x=(", "unable to parse requirement: found '(', expected: identifier"),
        ("!=a", "found '!=', expected: !, identifier, or 'end of string'"),
        ("!", "unable to parse requirement: found '', expected: identifier"),
    ],
)
def test_syntax_errors_name_the_offending_token(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse(text)
    assert exc.value.message == message


def test_bad_value_error_names_value_and_rule() -> None:
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse("app=$bar")
    msg = exc.value.message
    assert msg.startswith('unable to parse requirement: values[0][app]: Invalid value: "$bar": ')
    assert "a valid label must be an empty string or consist of alphanumeric characters" in msg
    assert "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?'" in msg


def test_bad_key_error_names_key() -> None:
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse("a/b/c=d")
    assert exc.value.message.startswith('unable to parse requirement: key: Invalid value: "a/b/c": ')
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse("Example.com/x")
    assert "prefix part a lowercase RFC 1123 subdomain" in exc.value.message


def test_greater_than_needs_an_integer() -> None:
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse("x>a")
    assert "for 'Gt', 'Lt' operators, the value must be an integer" in exc.value.message


def test_value_longer_than_63_characters_is_rejected() -> None:
    LabelSelector.parse("x=" + "a" * 63)
    with pytest.raises(BadRequest) as exc:
        LabelSelector.parse("x=" + "a" * 64)
    assert "must be no more than 63 characters" in exc.value.message


def test_whitespace_is_tolerated_everywhere_between_tokens() -> None:
    sel = LabelSelector.parse("  env \t in ( prod , staging ) ,\n tier != db , ! legacy ")
    assert str(sel) == "env in (prod,staging),!legacy,tier!=db"


def test_keywords_are_values_inside_sets() -> None:
    assert LabelSelector.parse("x in (in,notin)").matches({"x": "notin"})


def test_set_edge_cases_follow_kubernetes() -> None:
    # "()" and empty items stand for the empty value.
    assert str(LabelSelector.parse("x in ()")) == "x in ()"
    assert str(LabelSelector.parse("x in (a,,b)")) == "x in (,a,b)"
    assert LabelSelector.parse("x in (,a)").matches({"x": ""})
    assert LabelSelector.parse("x=").matches({"x": ""})
    assert not LabelSelector.parse("x=").matches({})


def test_parse_is_deterministic() -> None:
    assert LabelSelector.parse("x=a,a=x") == LabelSelector.parse("a=x,x=a")
    assert hash(LabelSelector.parse("x in (b,a)")) == hash(LabelSelector.parse("x in (a,b)"))


# ---------------------------------------------------------------------------------------------
# Label selector matching


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {"x": "y"}, True),
        ("x=y", {"x": "y"}, True),
        ("x==y", {"x": "y"}, True),
        ("x=z", {"x": "y"}, False),
        ("x=y", {}, False),
        ("x!=y", {"x": "z"}, True),
        ("x!=y", {}, True),  # != also matches objects without the key
        ("x!=y", {"x": "y"}, False),
        ("x in (a,b)", {"x": "b"}, True),
        ("x in (a,b)", {"x": "c"}, False),
        ("x in (a,b)", {}, False),
        ("x notin (a,b)", {"x": "c"}, True),
        ("x notin (a,b)", {}, True),
        ("x notin (a,b)", {"x": "a"}, False),
        ("x", {"x": ""}, True),
        ("x", {"y": "x"}, False),
        ("!x", {"y": "x"}, True),
        ("!x", {"x": "1"}, False),
        ("x>1", {"x": "2"}, True),
        ("x>1", {"x": "1"}, False),
        ("x<1", {"x": "-3"}, True),
        ("x>1", {"x": "two"}, False),
        ("x>1", {}, False),
        ("x=a,y=b", {"x": "a", "y": "b"}, True),
        ("x=a,y=b", {"x": "a", "y": "c"}, False),
        ("example.com/app=web", {"example.com/app": "web"}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(text).matches(labels) is expected


def test_empty_property() -> None:
    assert LabelSelector.parse("").empty
    assert LabelSelector.parse("   ").empty
    assert not LabelSelector.parse("x").empty


def test_exact_reports_pinned_labels() -> None:
    sel = LabelSelector.parse("app=web,tier in (db),env in (a,b),x!=y")
    assert sel.exact("app") == "web"
    assert sel.exact("tier") == "db"
    assert sel.exact("env") is None
    assert sel.exact("x") is None
    assert sel.exact("absent") is None


# ---------------------------------------------------------------------------------------------
# Structured selectors (metav1.LabelSelector)


def test_from_dict_matches_like_the_string_form() -> None:
    sel = LabelSelector.from_dict(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "owner", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel == LabelSelector.parse("app=web,tier in (fe,be),env notin (dev),owner,!legacy")
    assert sel.matches({"app": "web", "tier": "fe", "owner": "me"})
    assert not sel.matches({"app": "web", "tier": "fe", "owner": "me", "legacy": "1"})


def test_from_dict_none_matches_nothing_and_empty_everything() -> None:
    assert not LabelSelector.from_dict(None).matches({})
    assert not LabelSelector.from_dict(None).empty
    assert LabelSelector.from_dict({}).matches({"a": "b"})
    assert LabelSelector.from_dict({}).empty


def test_from_dict_bad_operator_is_invalid_with_field() -> None:
    with pytest.raises(Invalid) as exc:
        LabelSelector.from_dict(
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}, path="spec.selector"
        )
    assert exc.value.code == 422
    assert exc.value.causes == [
        (
            "FieldValueInvalid",
            'Invalid value: "Equals": not a valid selector operator',
            "spec.selector.matchExpressions[0].operator",
        )
    ]
    assert exc.value.message == (
        'spec.selector.matchExpressions[0].operator: Invalid value: "Equals": not a valid selector operator'
    )


def test_from_dict_operator_and_values_must_agree() -> None:
    with pytest.raises(Invalid) as exc:
        LabelSelector.from_dict(
            {
                "matchExpressions": [
                    {"key": "a", "operator": "In", "values": []},
                    {"key": "b", "operator": "Exists", "values": ["x"]},
                ]
            }
        )
    assert exc.value.causes == [
        (
            "FieldValueRequired",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            "selector.matchExpressions[0].values",
        ),
        (
            "FieldValueForbidden",
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            "selector.matchExpressions[1].values",
        ),
    ]
    assert exc.value.message.startswith("[selector.matchExpressions[0].values: Required value")


def test_from_dict_reports_every_bad_key_and_value() -> None:
    with pytest.raises(Invalid) as exc:
        LabelSelector.from_dict(
            {
                "matchLabels": {"app": "no spaces", "-bad": "ok"},
                "matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["ok", "$no"]}],
            }
        )
    fields = [c[2] for c in exc.value.causes]
    assert fields == [
        "selector.matchLabels",
        "selector.matchLabels",
        "selector.matchExpressions[0].values[1]",
    ]
    assert exc.value.causes[0][1].startswith('Invalid value: "no spaces": a valid label must be')
    assert exc.value.causes[1][1].startswith('Invalid value: "-bad": name part must consist of')


# ---------------------------------------------------------------------------------------------
# Key and value validation


@pytest.mark.parametrize(
    "key", ["a", "A-b_c.d", "example.com/name", "a" * 63, "k8s.io/" + "n" * 63, "1", "x.y.z/1-2"]
)
def test_valid_keys(key: str) -> None:
    assert label_key_errors(key) == []


@pytest.mark.parametrize(
    "key", ["", "-a", "a-", "a/b/c", "/a", "a/", "A.com/x", "a" * 64, "a b", "x" * 254 + "/a", "a@b"]
)
def test_invalid_keys(key: str) -> None:
    assert label_key_errors(key) != []


@pytest.mark.parametrize("value", ["", "a", "A.b-c_d", "1" * 63])
def test_valid_values(value: str) -> None:
    assert label_value_errors(value) == []


@pytest.mark.parametrize("value", ["-a", "a-", "a b", "1" * 64, "a/b", "é"])
def test_invalid_values(value: str) -> None:
    assert label_value_errors(value) != []


# ---------------------------------------------------------------------------------------------
# Property: generated valid selectors parse to the semantics they spell

_alnum = st.sampled_from("abcxyz019ABZ")
_inner = st.sampled_from("abz09-_.")
_name = st.one_of(
    _alnum,
    st.builds(lambda first, mid, last: first + mid + last, _alnum, st.text(_inner, max_size=5), _alnum),
)
_prefix = st.sampled_from(["", "example.com/", "a.b-c/"])
_keys = st.builds(lambda p, n: p + n, _prefix, _name)
_values = st.one_of(st.just(""), _name)


@st.composite
def _requirements(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    key = draw(_keys)
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"]))
    if op in ("in", "notin"):
        values = draw(st.lists(_values, min_size=1, max_size=3))
    elif op in ("exists", "!"):
        values = []
    else:
        values = [draw(_values)]
    return key, op, values


def _spell(key: str, op: str, values: list[str], pad: str) -> str:
    if op == "exists":
        return key
    if op == "!":
        return f"!{pad}{key}"
    if op in ("in", "notin"):
        return f"{key} {op} ({pad}{(pad + ',' + pad).join(values)}{pad})"
    return f"{key}{pad}{op}{pad}{values[0]}"


def _means(key: str, op: str, values: list[str], labels: dict[str, str]) -> bool:
    have = labels.get(key)
    if op in ("=", "==", "in"):
        return have is not None and have in values
    if op in ("!=", "notin"):
        return have is None or have not in values
    if op == "exists":
        return have is not None
    return have is None


@given(
    reqs=st.lists(_requirements(), max_size=4),
    labels=st.dictionaries(_keys, _values, max_size=4),
    pad=st.sampled_from(["", " ", "  \t"]),
)
def test_generated_selectors_match_what_they_spell(
    reqs: list[tuple[str, str, list[str]]], labels: dict[str, str], pad: str
) -> None:
    text = ",".join(_spell(k, o, v, pad) for k, o, v in reqs)
    sel = LabelSelector.parse(text)
    assert sel.matches(labels) == all(_means(k, o, v, labels) for k, o, v in reqs)
    # Printing and parsing again changes nothing.
    assert LabelSelector.parse(str(sel)) == sel


@given(reqs=st.lists(_requirements(), min_size=1, max_size=3), data=st.data())
def test_selectors_match_labels_built_to_satisfy_them(
    reqs: list[tuple[str, str, list[str]]], data: st.DataObject
) -> None:
    # Build a label set that satisfies each requirement when the requirements are compatible.
    labels: dict[str, str] = {}
    for key, op, values in reqs:
        if op in ("=", "==", "in"):
            labels.setdefault(key, data.draw(st.sampled_from(values)))
        elif op == "exists":
            labels.setdefault(key, "x")
    consistent = all(_means(k, o, v, labels) for k, o, v in reqs)
    text = ",".join(_spell(k, o, v, "") for k, o, v in reqs)
    assert LabelSelector.parse(text).matches(labels) == consistent


# ---------------------------------------------------------------------------------------------
# Field selectors

_OBJ = {
    "apiVersion": "example.com/v1",
    "kind": "Widget",
    "metadata": {"name": "w1", "namespace": "default"},
    "spec": {"nodeName": "n1", "replicas": 3, "paused": False},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("metadata.name=w1", True),
        ("metadata.name==w1", True),
        ("metadata.name!=w1", False),
        ("metadata.name=w2", False),
        ("metadata.name!=w2", True),
        ("metadata.name=w1,metadata.namespace=default", True),
        ("metadata.name=w1,metadata.namespace=other", False),
        ("metadata.namespace!=kube-system", True),
        (" metadata.name = w1 ", True),
    ],
)
def test_field_matching(text: str, expected: bool) -> None:
    assert FieldSelector.parse(text).matches(_OBJ) is expected


def test_supported_fields_can_be_extended_and_read_scalars_as_strings() -> None:
    supported = DEFAULT_FIELDS | {"spec.nodeName", "spec.replicas", "spec.paused", "status.phase"}
    assert FieldSelector.parse("spec.nodeName=n1", supported).matches(_OBJ)
    assert FieldSelector.parse("spec.replicas=3", supported).matches(_OBJ)
    assert FieldSelector.parse("spec.paused=false", supported).matches(_OBJ)
    # A missing field reads as the empty string.
    assert FieldSelector.parse("status.phase=", supported).matches(_OBJ)
    assert FieldSelector.parse("status.phase!=Running", supported).matches(_OBJ)


def test_unsupported_field_is_a_bad_request_naming_it() -> None:
    with pytest.raises(BadRequest) as exc:
        FieldSelector.parse("foo.bar=baz")
    assert exc.value.code == 400
    assert exc.value.message == (
        '"foo.bar" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )


def test_term_without_operator_is_rejected() -> None:
    with pytest.raises(BadRequest) as exc:
        FieldSelector.parse("metadata.name")
    assert exc.value.message == "invalid selector: 'metadata.name'; can't understand 'metadata.name'"


def test_escaped_values() -> None:
    sel = FieldSelector.parse(r"metadata.name=a\,b\=c\\d")
    assert sel.exact("metadata.name") == "a,b=c\\d"
    assert FieldSelector.parse(str(sel)) == sel
    with pytest.raises(BadRequest, match="invalid escape sequence"):
        FieldSelector.parse(r"metadata.name=a\x")
    with pytest.raises(BadRequest, match="unescaped character"):
        FieldSelector.parse("metadata.name=a=b")


def test_exact_narrows_only_on_equality() -> None:
    sel = FieldSelector.parse("metadata.namespace=prod,metadata.name!=x")
    assert sel.exact("metadata.namespace") == "prod"
    assert sel.exact("metadata.name") is None
    assert FieldSelector.parse("metadata.namespace==prod").exact("metadata.namespace") == "prod"
    assert FieldSelector.parse("").empty


@given(name=st.text(min_size=0, max_size=20), other=st.text(max_size=20))
def test_any_value_survives_escaping(name: str, other: str) -> None:
    escaped = name.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
    sel = FieldSelector.parse(f"metadata.name={escaped}")
    obj = {"metadata": {"name": name.strip()}}
    assert sel.matches(obj)
    assert sel.matches({"metadata": {"name": other.strip()}}) == (other.strip() == name.strip())
