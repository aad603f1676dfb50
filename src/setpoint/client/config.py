"""Where the server is and how to talk to it: URLs, bearer token, TLS trust, timeout.

``ClientConfig.from_kubeconfig()`` reads the kubeconfig that ``setpoint serve`` writes
(``DATA_DIR/kubeconfig.yaml``) or any other kubeconfig with a token user, so an agent needs no
configuration of its own on a machine where ``kubectl`` already works.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_KUBECONFIGS = (Path("~/.kube/config"), Path(".setpoint/kubeconfig.yaml"))


class ConfigError(ValueError):
    """The kubeconfig is missing, malformed, or lacks what the client needs."""


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the API server.

    ``servers`` may name several URLs of the same control plane; a request that cannot connect
    to one tries the next, in order. ``timeout`` bounds every request except watch streams,
    which are bounded by their own idle timeout instead.
    """

    servers: tuple[str, ...]
    token: str | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    timeout: float = 30.0
    namespace: str | None = None  # the context's namespace, for callers that want a default
    extra_headers: dict[str, str] = field(default_factory=dict)

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        ca_data: bytes | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
        namespace: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        urls = (servers,) if isinstance(servers, str) else tuple(servers)
        if not urls:
            raise ConfigError("at least one server URL is required")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"server URL must start with http:// or https://: {url!r}")
        object.__setattr__(self, "servers", tuple(u.rstrip("/") for u in urls))
        object.__setattr__(self, "token", token or None)
        object.__setattr__(self, "ca_file", os.fspath(ca_file) if ca_file is not None else None)
        object.__setattr__(self, "ca_data", ca_data)
        object.__setattr__(self, "insecure", insecure)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "namespace", namespace)
        object.__setattr__(self, "extra_headers", dict(extra_headers or {}))

    def __repr__(self) -> str:  # never print the token
        token = "<set>" if self.token else None
        return (f"ClientConfig(servers={self.servers!r}, token={token}, ca_file={self.ca_file!r}, "
                f"insecure={self.insecure}, timeout={self.timeout})")

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify`` gets: False when insecure, else a context trusting the CA."""
        if self.insecure:
            return False
        if self.ca_file is None and self.ca_data is None:
            return True
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.ca_data is not None:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        return ctx

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, context: str | None = None
    ) -> ClientConfig:
        """Read a kubeconfig: ``path``, else ``$KUBECONFIG`` (files joined by ``os.pathsep``,
        merged first-wins like kubectl), else ``~/.kube/config``, else ``.setpoint/kubeconfig.yaml``.

        Uses ``context`` or the ``current-context``; reads the cluster's ``server``,
        ``certificate-authority`` (relative to the file) or ``certificate-authority-data``,
        ``insecure-skip-tls-verify``, and the user's ``token`` or ``tokenFile``. Client
        certificates and exec plugins are not supported.
        """
        files = _kubeconfig_files(path)
        merged = _merge([(f, _load(f)) for f in files])
        name = context or merged["current-context"]
        if not name:
            raise ConfigError(f"no context given and no current-context in {', '.join(map(str, files))}")
        ctx = merged["contexts"].get(name)
        if ctx is None:
            raise ConfigError(f"context {name!r} not found")
        ctx_body, _ = ctx
        cluster_entry = merged["clusters"].get(ctx_body.get("cluster", ""))
        if cluster_entry is None:
            raise ConfigError(f"cluster {ctx_body.get('cluster')!r} of context {name!r} not found")
        cluster, cluster_dir = cluster_entry
        server = cluster.get("server")
        if not isinstance(server, str) or not server:
            raise ConfigError(f"cluster {ctx_body.get('cluster')!r} has no server")
        ca_file = cluster.get("certificate-authority")
        if isinstance(ca_file, str) and ca_file:
            ca_file = str((cluster_dir / Path(ca_file).expanduser()).resolve())
        else:
            ca_file = None
        ca_data_b64 = cluster.get("certificate-authority-data")
        ca_data = base64.b64decode(ca_data_b64) if isinstance(ca_data_b64, str) and ca_data_b64 else None
        token: str | None = None
        user_entry = merged["users"].get(ctx_body.get("user", ""))
        if user_entry is not None:
            user, user_dir = user_entry
            if isinstance(user.get("token"), str):
                token = user["token"]
            elif isinstance(user.get("tokenFile"), str):
                token = (user_dir / Path(user["tokenFile"]).expanduser()).read_text().strip()
        namespace = ctx_body.get("namespace")
        return cls(
            server, token=token, ca_file=ca_file, ca_data=ca_data,
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            namespace=namespace if isinstance(namespace, str) and namespace else None,
        )


def _kubeconfig_files(path: str | os.PathLike[str] | None) -> list[Path]:
    if path is not None:
        return [Path(path).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    if env:
        files = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
        existing = [f for f in files if f.exists()]
        if not existing:
            raise ConfigError(f"none of the files in $KUBECONFIG exist: {env}")
        return existing
    for candidate in DEFAULT_KUBECONFIGS:
        if candidate.expanduser().exists():
            return [candidate.expanduser()]
    raise ConfigError("no kubeconfig: give a path, set $KUBECONFIG, or create ~/.kube/config")


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read kubeconfig {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"kubeconfig {path} is not valid YAML: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping")
    return doc


def _merge(docs: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Named entries from every file, the first file to define a name winning (as kubectl does)."""
    out: dict[str, Any] = {"current-context": "", "clusters": {}, "users": {}, "contexts": {}}
    inner = {"clusters": "cluster", "users": "user", "contexts": "context"}
    for path, doc in docs:
        if not out["current-context"] and isinstance(doc.get("current-context"), str):
            out["current-context"] = doc["current-context"]
        for section, key in inner.items():
            entries = doc.get(section)
            for entry in entries if isinstance(entries, list) else ():
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    continue
                body = entry.get(key)
                if isinstance(body, dict):
                    out[section].setdefault(entry["name"], (body, path.parent))
    return out
