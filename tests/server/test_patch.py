"""Merge patch (RFC 7386) and JSON patch (RFC 6902) with the API server's status codes."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from setpoint.server.errors import BadRequest, Invalid, RequestEntityTooLarge
from setpoint.server.patch import (
    MAX_JSON_PATCH_OPERATIONS,
    PATCH_CONTENT_TYPES,
    apply_merge_patch,
    json_patch,
    merge_patch,
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
_keys = st.text(alphabet="abc/~-", max_size=3)
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)),
    max_leaves=20,
)
json_objects = st.dictionaries(_keys, json_values, max_size=5)


def _canon(value: Any) -> str:
    """Equality as JSON sees it: true is not 1, 1 is not 1.0."""
    return json.dumps(value, sort_keys=True)


def _containers(value: Any) -> list[int]:
    if isinstance(value, dict):
        return [id(value), *(i for v in value.values() for i in _containers(v))]
    if isinstance(value, list):
        return [id(value), *(i for v in value for i in _containers(v))]
    return []


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _merge_diff(a: Any, b: Any) -> Any:
    """The merge patch that turns ``a`` into ``b`` (``b`` free of nulls in objects)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return b
    patch: dict[str, Any] = {k: None for k in a if k not in b}
    for k, v in b.items():
        if k not in a:
            patch[k] = v
        elif _canon(a[k]) != _canon(v):
            patch[k] = _merge_diff(a[k], v)
    return patch


# ---------------------------------------------------------------------------------------------
# merge_patch


def test_rfc7386_appendix_a_examples() -> None:
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert merge_patch(target, patch) == expected, (target, patch)


def test_merge_keeps_member_order_and_appends_new_members() -> None:
    out = merge_patch({"apiVersion": "v1", "kind": "K", "spec": {"a": 1}}, {"spec": {"b": 2}, "z": 1})
    assert list(out) == ["apiVersion", "kind", "spec", "z"]


def test_apply_merge_patch_requires_an_object() -> None:
    for bad in ([{"op": "add"}], "x", 3, None):
        with pytest.raises(BadRequest) as exc:
            apply_merge_patch({"a": 1}, bad)
        assert exc.value.code == 400
    assert apply_merge_patch({"a": 1}, {"a": None, "b": 2}) == {"b": 2}


@given(target=json_values, patch=json_values)
def test_merge_patch_does_not_mutate_or_share(target: Any, patch: Any) -> None:
    t0, p0 = copy.deepcopy(target), copy.deepcopy(patch)
    out = merge_patch(target, patch)
    assert _canon(target) == _canon(t0) and _canon(patch) == _canon(p0)
    shared = set(_containers(out)) & (set(_containers(target)) | set(_containers(patch)))
    assert not shared


@given(a=json_objects, b=json_objects)
def test_merge_of_the_diff_reproduces_the_target(a: dict[str, Any], b: dict[str, Any]) -> None:
    b = _without_nulls(b)
    assert _canon(merge_patch(a, _merge_diff(a, b))) == _canon(b)


@given(target=json_values, patch=json_values)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert _canon(merge_patch(once, patch)) == _canon(once)


@given(target=json_objects)
def test_empty_merge_patch_changes_nothing(target: dict[str, Any]) -> None:
    assert _canon(merge_patch(target, {})) == _canon(target)


@given(target=json_values, patch=json_objects)
def test_object_patch_results_have_no_null_members_from_the_patch(target: Any, patch: dict[str, Any]) -> None:
    out = merge_patch(target, patch)
    for k, v in patch.items():
        if v is None:
            assert k not in out
        else:
            assert k in out


# ---------------------------------------------------------------------------------------------
# json_patch

DOC: dict[str, Any] = {
    "metadata": {"name": "w", "labels": {"a": "1"}},
    "spec": {"ports": [80, 443], "on": True},
}


def test_all_operations() -> None:
    out = json_patch(
        DOC,
        [
            {"op": "test", "path": "/metadata/name", "value": "w"},
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "replace", "path": "/spec/on", "value": False},
            {"op": "add", "path": "/spec/ports/-", "value": 8080},
            {"op": "remove", "path": "/spec/ports/0"},
            {"op": "copy", "from": "/metadata/labels", "path": "/spec/labels"},
            {"op": "move", "from": "/metadata/labels/a", "path": "/metadata/labels/c"},
            {"op": "add", "path": "/metadata/annotations", "value": {"x~y/z": "1"}},
            {"op": "replace", "path": "/metadata/annotations/x~0y~1z", "value": "2"},
        ],
    )
    assert out == {
        "metadata": {"name": "w", "labels": {"b": "2", "c": "1"}, "annotations": {"x~y/z": "2"}},
        "spec": {"ports": [443, 8080], "on": False, "labels": {"a": "1", "b": "2"}},
    }
    assert DOC["metadata"]["labels"] == {"a": "1"}  # untouched


@pytest.mark.parametrize(
    "patch",
    [
        {"op": "add", "path": "/a", "value": 1},  # not a list
        "[]",
        [1],
        [{"path": "/a", "value": 1}],
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": 3, "path": "/a"}],
        [{"op": "add", "value": 1}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "add", "path": "/a~2", "value": 1}],
        [{"op": "add", "path": 7, "value": 1}],
        [{"op": "add", "path": "/a"}],
        [{"op": "replace", "path": "/a"}],
        [{"op": "test", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "copy", "path": "/a", "from": "b"}],
    ],
)
def test_malformed_patch_documents_are_bad_requests(patch: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        json_patch(DOC, patch)
    assert exc.value.code == 400


def test_malformed_operation_is_reported_even_after_good_ones() -> None:
    with pytest.raises(BadRequest, match="operation 1"):
        json_patch(DOC, [{"op": "add", "path": "/x", "value": 1}, {"op": "nope", "path": "/x"}])


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ([{"op": "test", "path": "/metadata/name", "value": "other"}], "differs from the tested value"),
        ([{"op": "test", "path": "/spec/on", "value": 1}], "differs from the tested value"),
        ([{"op": "test", "path": "/nope", "value": 1}], "path '/nope' does not exist"),
        ([{"op": "remove", "path": "/nope"}], "path '/nope' does not exist"),
        ([{"op": "replace", "path": "/spec/nope", "value": 1}], "path '/spec/nope' does not exist"),
        ([{"op": "replace", "path": "/spec/ports/9", "value": 1}], "does not exist"),
        ([{"op": "add", "path": "/a/b", "value": 1}], "the parent of path '/a/b' does not exist"),
        ([{"op": "add", "path": "/spec/ports/9", "value": 1}], "can't insert outside of list"),
        ([{"op": "move", "from": "/nope", "path": "/x"}], "'from' '/nope' does not exist"),
        ([{"op": "copy", "from": "/nope", "path": "/x"}], "'from' '/nope' does not exist"),
        ([{"op": "move", "from": "/spec", "path": "/spec/x"}], "own children"),
    ],
)
def test_operations_that_do_not_apply_are_invalid(patch: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(Invalid) as exc:
        json_patch(DOC, patch)
    assert exc.value.code == 422
    assert exc.value.reason == "Invalid"
    assert fragment in exc.value.message
    assert exc.value.causes[0][2] == patch[0]["path"]
    # The document itself is never echoed into the error.
    assert "443" not in exc.value.message


def test_failure_is_atomic_and_names_the_operation() -> None:
    patch = [{"op": "add", "path": "/spec/x", "value": 1}, {"op": "test", "path": "/spec/x", "value": 2}]
    with pytest.raises(Invalid, match="operation 1"):
        json_patch(DOC, patch)
    assert "x" not in DOC["spec"]


def test_too_many_operations() -> None:
    ops = [{"op": "test", "path": "", "value": {}}] * (MAX_JSON_PATCH_OPERATIONS + 1)
    with pytest.raises(RequestEntityTooLarge) as exc:
        json_patch({}, ops)
    assert exc.value.code == 413
    assert "The allowed maximum operations in a JSON patch is 10000, got 10001" in exc.value.message


def test_root_replace_and_empty_patch() -> None:
    assert json_patch(DOC, [{"op": "replace", "path": "", "value": {"a": 1}}]) == {"a": 1}
    out = json_patch(DOC, [])
    assert out == DOC and out is not DOC


@given(a=json_values, b=json_values)
def test_library_diff_applies_to_the_target(a: Any, b: Any) -> None:
    patch = jsonpatch.make_patch(a, b).patch
    assert _canon(json_patch(a, patch)) == _canon(b)


@given(target=json_objects, value=json_values, key=_keys)
def test_add_then_test_then_remove_round_trips(target: dict[str, Any], value: Any, key: str) -> None:
    t0 = copy.deepcopy(target)
    pointer = "/" + key.replace("~", "~0").replace("/", "~1")
    patch = [
        {"op": "add", "path": pointer, "value": value},
        {"op": "test", "path": pointer, "value": value},
        {"op": "remove", "path": pointer},
    ]
    out = json_patch(target, patch)
    expected = {k: v for k, v in t0.items() if k != key}
    assert _canon(out) == _canon(expected)
    assert _canon(target) == _canon(t0)
    assert not set(_containers(out)) & set(_containers(target))


@given(target=json_objects, value=json_values)
def test_patch_values_are_not_shared_with_the_result(target: dict[str, Any], value: Any) -> None:
    patch = [{"op": "add", "path": "/new", "value": value}]
    out = json_patch(target, patch)
    assert not set(_containers(out)) & set(_containers(patch))


def test_content_types() -> None:
    assert set(PATCH_CONTENT_TYPES) == {"application/merge-patch+json", "application/json-patch+json"}
    merge = PATCH_CONTENT_TYPES["application/merge-patch+json"]
    assert merge({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    jp = PATCH_CONTENT_TYPES["application/json-patch+json"]
    assert jp({"a": 1}, [{"op": "remove", "path": "/a"}]) == {}
