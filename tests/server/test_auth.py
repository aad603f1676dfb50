"""Static token authentication and ABAC authorization with Kubernetes' file formats and rules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from setpoint.server.auth import (
    ALL_AUTHENTICATED,
    ANONYMOUS,
    ABACAuthorizer,
    AlwaysAllow,
    Attributes,
    Policy,
    TokenAuthenticator,
    User,
    forbidden_error,
    forbidden_message,
)
from setpoint.server.errors import Forbidden, Unauthorized

TOKENS = """\
# token,user,uid,"groups"
s3cret,alice,uid-1,"dev,ops"

t0ken, bob ,uid-2
quoted,"carol, jr.",uid-3,"a, b ,,c"
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str, mtime_ns: int | None = None) -> None:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


# ---------------------------------------------------------------------------------------------
# Token file


def test_tokens_authenticate_users_with_groups(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, TOKENS)
    authn = TokenAuthenticator.from_file(path)
    assert len(authn) == 3
    assert authn.authenticate("Bearer s3cret") == User("alice", "uid-1", ("dev", "ops", ALL_AUTHENTICATED))
    assert authn.authenticate("Bearer t0ken") == User(" bob ", "uid-2", (ALL_AUTHENTICATED,))
    assert authn.authenticate("Bearer quoted") == User(
        "carol, jr.", "uid-3", ("a", "b", "c", ALL_AUTHENTICATED)
    )


def test_header_parsing_follows_kube_apiserver(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, TOKENS)
    authn = TokenAuthenticator.from_file(path)
    assert authn.authenticate("bearer s3cret").name == "alice"
    assert authn.authenticate("  BEARER s3cret  ").name == "alice"
    assert authn.authenticate("Bearer s3cret trailing words").name == "alice"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "s3cret",
        "Basic s3cret",
        "Bearer",
        "Bearer ",
        "Bearer  s3cret",
        "Bearer wrong",
        "Bearer s3cre",
    ],
)
def test_missing_or_wrong_credentials_are_unauthorized(tmp_path: Path, header: str | None) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, TOKENS)
    authn = TokenAuthenticator.from_file(path)
    with pytest.raises(Unauthorized) as exc:
        authn.authenticate(header)
    assert exc.value.code == 401
    assert exc.value.message == "Unauthorized"


def test_token_is_not_kept_in_memory_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, TOKENS)
    authn = TokenAuthenticator.from_file(path)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in authn._users)
    assert b"s3cret" not in authn._users


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("good,u,1\nonly,two\n", 2),
        ("# c\n\nx\n", 3),
        ('a,"unterminated,u\n', 1),
    ],
)
def test_malformed_lines_name_their_line_number(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, text)
    with pytest.raises(ValueError, match=f"line {line}"):
        TokenAuthenticator.from_file(path)


def test_too_few_columns_message(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, "a,b\n")
    with pytest.raises(
        ValueError, match=r"must have at least 3 columns \(token, user name, user uid\), found 2"
    ):
        TokenAuthenticator.from_file(path)


def test_empty_tokens_are_skipped_and_later_duplicates_win(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, ",nobody,0\ndup,first,1\ndup,second,2\n")
    authn = TokenAuthenticator.from_file(path)
    assert len(authn) == 1
    assert authn.authenticate("Bearer dup").name == "second"
    with pytest.raises(Unauthorized):
        authn.authenticate("Bearer ")


def test_missing_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        TokenAuthenticator.from_file(tmp_path / "absent.csv")


def test_file_changes_are_picked_up_after_the_recheck_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, "old,olduser,1\n", mtime_ns=1_000_000_000)
    clock = FakeClock()
    authn = TokenAuthenticator(path, clock=clock)
    assert authn.authenticate("Bearer old").name == "olduser"

    _write(path, "new,newuser,2\n", mtime_ns=2_000_000_000)
    # Within the interval a known token does not make the file be looked at...
    clock.now += 0.5
    assert authn.authenticate("Bearer old").name == "olduser"
    # ...but an unknown one does, so a token added a moment ago works at once.
    assert authn.authenticate("Bearer new").name == "newuser"
    with pytest.raises(Unauthorized):
        authn.authenticate("Bearer old")


def test_removed_tokens_stop_working_after_the_recheck_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, "old,olduser,1\n", mtime_ns=1_000_000_000)
    clock = FakeClock()
    authn = TokenAuthenticator(path, clock=clock)
    _write(path, "new,newuser,2\n", mtime_ns=2_000_000_000)
    clock.now += 0.5
    assert authn.authenticate("Bearer old").name == "olduser"
    clock.now += 0.6
    with pytest.raises(Unauthorized):
        authn.authenticate("Bearer old")


def test_same_size_rewrite_is_detected_by_mtime(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, "aaa,u1,1\n", mtime_ns=1_000_000_000)
    clock = FakeClock()
    authn = TokenAuthenticator(path, clock=clock)
    _write(path, "bbb,u1,1\n", mtime_ns=1_000_000_001)
    clock.now += 1.0
    assert authn.authenticate("Bearer bbb").name == "u1"


def test_malformed_edit_keeps_the_previous_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, "keep,u,1\n", mtime_ns=1_000_000_000)
    clock = FakeClock()
    authn = TokenAuthenticator(path, clock=clock)
    _write(path, "broken\n", mtime_ns=2_000_000_000)
    clock.now += 2
    assert authn.authenticate("Bearer keep").name == "u"
    # Once fixed, the new content is loaded.
    _write(path, "fixed,v,2\n", mtime_ns=3_000_000_000)
    clock.now += 2
    assert authn.authenticate("Bearer fixed").name == "v"


def test_deleted_file_keeps_the_previous_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    _write(path, "keep,u,1\n")
    clock = FakeClock()
    authn = TokenAuthenticator(path, clock=clock)
    path.unlink()
    clock.now += 2
    assert authn.authenticate("Bearer keep").name == "u"


# ---------------------------------------------------------------------------------------------
# ABAC

ALICE = User("alice", "1", ("dev", ALL_AUTHENTICATED))
BOB = User("bob", "2", ("ops", ALL_AUTHENTICATED))


def _policy(**spec: Any) -> str:
    return json.dumps(
        {"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": spec}
    )


def _abac(tmp_path: Path, *lines: str) -> ABACAuthorizer:
    path = tmp_path / "policy.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return ABACAuthorizer.from_file(path)


def _res(
    user: User,
    verb: str,
    resource: str = "widgets",
    namespace: str = "default",
    group: str = "example.com",
    subresource: str = "",
    name: str = "",
) -> Attributes:
    return Attributes(
        user=user,
        verb=verb,
        namespace=namespace,
        resource=resource,
        api_group=group,
        subresource=subresource,
        name=name,
    )


def _path(user: User, verb: str, path: str) -> Attributes:
    return Attributes(user=user, verb=verb, path=path, resource_request=False)


def test_kubernetes_documentation_examples(tmp_path: Path) -> None:
    authz = _abac(
        tmp_path,
        "# from the Kubernetes ABAC documentation",
        _policy(user="alice", namespace="*", resource="*", apiGroup="*"),
        _policy(user="kubelet", namespace="*", resource="pods", readonly=True),
        _policy(user="bob", namespace="projectCaribou", resource="*", apiGroup="*", readonly=True),
        _policy(group="system:authenticated", readonly=True, nonResourcePath="*"),
        "",
    )
    assert authz.authorize(_res(ALICE, "delete", namespace="anything"))
    assert authz.authorize(_res(ALICE, "create", namespace=""))  # "*" includes cluster scope
    kubelet = User("kubelet", "", (ALL_AUTHENTICATED,))
    assert authz.authorize(_res(kubelet, "list", resource="pods", group=""))
    assert not authz.authorize(_res(kubelet, "create", resource="pods", group=""))
    # apiGroup unset means the core group only.
    assert not authz.authorize(_res(kubelet, "list", resource="pods", group="example.com"))
    assert authz.authorize(_res(BOB, "watch", namespace="projectCaribou"))
    assert not authz.authorize(_res(BOB, "update", namespace="projectCaribou"))
    assert not authz.authorize(_res(BOB, "get", namespace="other"))
    assert authz.authorize(_path(BOB, "get", "/version"))
    assert not authz.authorize(_path(BOB, "post", "/version"))
    assert not authz.authorize(_path(ANONYMOUS, "get", "/version"))


def test_readonly_allows_exactly_get_list_watch(tmp_path: Path) -> None:
    authz = _abac(tmp_path, _policy(user="alice", namespace="*", resource="*", apiGroup="*", readonly=True))
    for verb in ("get", "list", "watch"):
        assert authz.authorize(_res(ALICE, verb))
    for verb in ("create", "update", "patch", "delete", "deletecollection"):
        assert not authz.authorize(_res(ALICE, verb))


def test_star_user_or_group_means_every_authenticated_user(tmp_path: Path) -> None:
    for spec in ({"user": "*"}, {"group": "*"}):
        authz = _abac(tmp_path, _policy(namespace="*", resource="*", apiGroup="*", **spec))
        assert authz.authorize(_res(ALICE, "create"))
        assert not authz.authorize(_res(ANONYMOUS, "get"))
    assert authz.policies == (Policy(group=ALL_AUTHENTICATED, api_group="*", resource="*", namespace="*"),)


def test_user_and_group_must_both_match_when_both_are_given(tmp_path: Path) -> None:
    authz = _abac(tmp_path, _policy(user="alice", group="ops", namespace="*", resource="*", apiGroup="*"))
    assert not authz.authorize(_res(ALICE, "get"))
    alice_ops = User("alice", "1", ("ops",))
    assert authz.authorize(_res(alice_ops, "get"))
    assert not authz.authorize(_res(BOB, "get"))


def test_group_rules(tmp_path: Path) -> None:
    authz = _abac(tmp_path, _policy(group="dev", namespace="dev", resource="widgets", apiGroup="example.com"))
    assert authz.authorize(_res(ALICE, "create", namespace="dev"))
    assert not authz.authorize(_res(BOB, "create", namespace="dev"))
    assert not authz.authorize(_res(ALICE, "create", namespace="prod"))
    assert not authz.authorize(_res(ALICE, "create", namespace="dev", resource="gadgets"))
    assert not authz.authorize(_res(ALICE, "create", namespace="dev", group="other.com"))


def test_rule_without_subject_matches_nobody(tmp_path: Path) -> None:
    authz = _abac(tmp_path, _policy(namespace="*", resource="*", apiGroup="*"))
    assert not authz.authorize(_res(ALICE, "get"))


def test_empty_namespace_matches_only_cluster_scope(tmp_path: Path) -> None:
    authz = _abac(tmp_path, _policy(user="alice", resource="namespaces", apiGroup=""))
    assert authz.authorize(_res(ALICE, "create", resource="namespaces", namespace="", group=""))
    assert not authz.authorize(_res(ALICE, "create", resource="namespaces", namespace="x", group=""))


def test_resource_and_non_resource_rules_do_not_cross(tmp_path: Path) -> None:
    authz = _abac(tmp_path, _policy(user="alice", nonResourcePath="*"))
    assert authz.authorize(_path(ALICE, "get", "/healthz"))
    assert not authz.authorize(_res(ALICE, "get"))
    authz = _abac(tmp_path, _policy(user="alice", namespace="*", resource="*", apiGroup="*"))
    assert not authz.authorize(_path(ALICE, "get", "/healthz"))


def test_non_resource_path_wildcards(tmp_path: Path) -> None:
    authz = _abac(
        tmp_path,
        _policy(user="alice", nonResourcePath="/apis/*"),
        _policy(user="alice", nonResourcePath="/version"),
    )
    assert authz.authorize(_path(ALICE, "get", "/apis/example.com"))
    assert authz.authorize(_path(ALICE, "get", "/apis/"))
    assert not authz.authorize(_path(ALICE, "get", "/apis"))
    assert authz.authorize(_path(ALICE, "get", "/version"))
    assert not authz.authorize(_path(ALICE, "get", "/version/x"))
    assert not authz.authorize(_path(ALICE, "get", "/healthz"))


def test_unversioned_v0_policies_convert_like_kubernetes(tmp_path: Path) -> None:
    authz = _abac(tmp_path, json.dumps({"user": "bob", "readonly": True}), json.dumps({"group": "dev"}))
    assert authz.policies[0] == Policy(
        user="bob", readonly=True, api_group="*", resource="*", namespace="*", non_resource_path="*"
    )
    assert authz.authorize(_path(BOB, "get", "/anything"))
    assert authz.authorize(_res(BOB, "list", group="any"))
    assert not authz.authorize(_res(BOB, "create"))
    assert authz.authorize(_res(ALICE, "create"))
    authz = _abac(tmp_path, json.dumps({"namespace": "ns1"}))
    assert authz.policies[0] == Policy(group=ALL_AUTHENTICATED, api_group="*", resource="*", namespace="ns1")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not a JSON object"),
        ("[1]", "not a JSON object"),
        (
            json.dumps({"apiVersion": "abac.authorization.kubernetes.io/v2", "kind": "Policy", "spec": {}}),
            "unsupported apiVersion",
        ),
        (
            json.dumps({"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy"}),
            "no 'spec'",
        ),
        (_policy(user="a", namepsace="*"), "unknown spec field(s): namepsace"),
        (_policy(user="a", readonly="yes"), "'readonly' must be a bool"),
    ],
)
def test_bad_policy_lines_name_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "policy.jsonl"
    path.write_text("# comment\n" + _policy(user="ok") + "\n" + line + "\n")
    with pytest.raises(ValueError) as exc:
        ABACAuthorizer.from_file(path)
    assert f"error reading policy file {path}, line 3: " in str(exc.value)
    assert reason in str(exc.value)


def test_always_allow() -> None:
    assert AlwaysAllow().authorize(_res(ANONYMOUS, "delete"))


# ---------------------------------------------------------------------------------------------
# 403 wording


def test_forbidden_messages_match_kube_apiserver() -> None:
    assert forbidden_message(_res(ALICE, "create")) == (
        'User "alice" cannot create resource "widgets" in API group "example.com" in the namespace "default"'
    )
    assert forbidden_message(_res(ALICE, "list", namespace="")) == (
        'User "alice" cannot list resource "widgets" in API group "example.com" at the cluster scope'
    )
    assert forbidden_message(_res(ALICE, "update", subresource="status", group="")) == (
        'User "alice" cannot update resource "widgets/status" in API group "" in the namespace "default"'
    )
    assert forbidden_message(_path(ALICE, "get", "/metrics")) == 'User "alice" cannot get path "/metrics"'


def test_forbidden_error_carries_kubernetes_message_and_details() -> None:
    err = forbidden_error(_res(ALICE, "get", name="w1"), "No policy matched.")
    assert isinstance(err, Forbidden) and err.code == 403
    assert err.message == (
        'widgets.example.com "w1" is forbidden: User "alice" cannot get resource "widgets" in API group '
        '"example.com" in the namespace "default": No policy matched.'
    )
    status = err.status()
    assert status["reason"] == "Forbidden"
    assert status["details"] == {"name": "w1", "group": "example.com", "kind": "widgets"}
    assert forbidden_error(_res(ALICE, "list", group="")).message.startswith(
        'widgets is forbidden: User "alice" cannot list'
    )
    assert forbidden_error(_path(ALICE, "get", "/metrics")).message == (
        'forbidden: User "alice" cannot get path "/metrics"'
    )
