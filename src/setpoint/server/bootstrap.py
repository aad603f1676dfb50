"""First-start files in the data directory: an admin token, a policy, and a kubeconfig.

A newcomer gets a secured server with nothing to configure; an operator replaces the tokens and
policy files with their own (``--token-file``, ``--authorization-policy-file``).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import yaml

ADMIN_USER = "admin"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_tokens(data_dir: Path) -> tuple[Path, str]:
    """The tokens file, created with one admin token if missing; returns it and the admin token."""
    path = data_dir / "tokens.csv"
    if not path.exists():
        token = secrets.token_urlsafe(32)
        _write_private(path, f'# token,user,uid,"groups"\n{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        return path, token
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) >= 2 and parts[1].strip() == ADMIN_USER and not line.startswith("#"):
            return path, parts[0].strip()
    return path, ""


def ensure_policy(data_dir: Path) -> Path:
    path = data_dir / "policy.jsonl"
    if not path.exists():
        rules = [
            {"user": ADMIN_USER, "namespace": "*", "resource": "*", "apiGroup": "*",
             "nonResourcePath": "*"},
            {"group": "system:masters", "namespace": "*", "resource": "*", "apiGroup": "*",
             "nonResourcePath": "*"},
            # Agents: reads everywhere; their writes are narrowed by node restriction.
            {"group": "system:nodes", "namespace": "*", "resource": "*", "apiGroup": "*"},
            {"group": "system:authenticated", "readonly": True, "nonResourcePath": "*"},
        ]
        lines = [json.dumps({"apiVersion": "abac.authorization.kubernetes.io/v1beta1",
                             "kind": "Policy", "spec": r}) for r in rules]
        _write_private(path, "\n".join(lines) + "\n")
    return path


def add_node_token(tokens_file: Path, node: str) -> str:
    """Give an agent credentials for node ``node``: user ``system:node:<node>`` in group
    ``system:nodes``. The server re-reads the tokens file, so no restart is needed."""
    token = secrets.token_urlsafe(32)
    user = f"system:node:{node}"
    with open(tokens_file, "a") as f:
        f.write(f'{token},{user},{user},"system:nodes"\n')
        f.flush()
        os.fsync(f.fileno())
    return token


def write_kubeconfig(data_dir: Path, server_url: str, token: str, ca_file: Path | None,
                     *, user: str = ADMIN_USER, filename: str = "kubeconfig.yaml") -> Path:
    cluster: dict[str, object] = {"server": server_url}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file.resolve())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "setpoint", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "setpoint",
                      "context": {"cluster": "setpoint", "user": user, "namespace": "default"}}],
        "current-context": "setpoint",
    }
    path = data_dir / filename
    _write_private(path, yaml.safe_dump(config, sort_keys=False))
    return path
