"""The server's kinds, from its discovery documents: how each is addressed and what users call it."""


from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

from setpoint.cli.objects.common import BUILTIN_GROUPS, CRD_GROUP, CLIError, usage_error
from setpoint.client import (
    Client,
    NotFound,
    Resource,
)
from setpoint.types import Object

# ---- discovery ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class KindInfo:
    """One served kind: how to address it, and the names users may call it by."""

    resource: Resource
    singular: str
    short_names: tuple[str, ...] = ()
    has_status: bool = False

    @property
    def kind(self) -> str:
        return self.resource.kind

    @property
    def group(self) -> str:
        return self.resource.group

    @property
    def plural(self) -> str:
        return self.resource.plural

    @property
    def namespaced(self) -> bool:
        return self.resource.namespaced

    @property
    def qualified(self) -> str:
        """``widget.example.com``; ``namespace`` for core kinds (how kubectl names objects)."""
        return type_ref(self.kind, self.group)

    def ref(self, name: str) -> str:
        return f"{self.qualified}/{name}"

    @property
    def contract(self) -> Literal["converged", "established", "exists"]:
        """What ``--wait`` waits for: agents' kinds converge, CRDs get Established, the rest exist."""
        if self.group == CRD_GROUP and self.kind == "CustomResourceDefinition":
            return "established"
        if self.has_status and self.group not in BUILTIN_GROUPS:
            return "converged"
        return "exists"


def type_ref(kind: str, group: str) -> str:
    return f"{kind.lower()}.{group}" if group else kind.lower()


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


class Discovery:
    """The server's discovery documents, fetched on demand and cached for one command."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lists: dict[str, list[KindInfo]] = {}
        self._groups: list[str] | None = None

    async def _get(self, path: str) -> Object:
        return await self.client.get_document(path)

    async def kinds_in(self, api_version: str, refresh: bool = False) -> list[KindInfo]:
        if refresh or api_version not in self._lists:
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            doc = await self._get(path)
            entries = [r for r in doc.get("resources") or [] if isinstance(r, dict)]
            subresources = {str(r.get("name")) for r in entries if "/" in str(r.get("name", ""))}
            group, _, version = api_version.rpartition("/")
            infos = []
            for r in entries:
                plural = str(r.get("name", ""))
                if not plural or "/" in plural:
                    continue
                infos.append(KindInfo(
                    Resource(group, version, plural, namespaced=bool(r.get("namespaced")), kind=str(r.get("kind", ""))),
                    singular=str(r.get("singularName") or str(r.get("kind", "")).lower()),
                    short_names=tuple(str(s) for s in r.get("shortNames") or ()),
                    has_status=f"{plural}/status" in subresources,
                ))
            self._lists[api_version] = infos
        return self._lists[api_version]

    async def for_kind(self, api_version: str, kind: str, refresh: bool = False) -> KindInfo:
        """The kind ``kind`` of ``api_version``; looked up again once when not found (a new CRD)."""
        for again in ((True,) if refresh else (False, True)):
            try:
                infos = await self.kinds_in(api_version, refresh=again)
            except NotFound:
                continue
            for info in infos:
                if info.kind == kind:
                    return info
        raise CLIError(f'the server does not serve kind "{kind}" in "{api_version}"')

    async def served(self, api_version: str, kind: str) -> bool:
        try:
            await self.for_kind(api_version, kind, refresh=True)
        except CLIError:
            return False
        return True

    async def all_kinds(self) -> list[KindInfo]:
        """Every kind: core v1 first, then each group's preferred version."""
        out = list(await self.kinds_in("v1"))
        if self._groups is None:
            doc = await self._get("/apis")
            self._groups = []
            for g in doc.get("groups") or []:
                pref = (g.get("preferredVersion") or {}).get("groupVersion") if isinstance(g, dict) else None
                if isinstance(pref, str) and pref:
                    self._groups.append(pref)
        for gv in self._groups:
            with contextlib.suppress(NotFound):
                out.extend(await self.kinds_in(gv))
        return out

    async def resolve(self, name: str) -> KindInfo:
        """A kind from what a user typed: plural, singular, kind, short name, or any of them
        qualified by group (``widgets.example.com``) or by version and group (``widgets.v1.example.com``)."""
        want = name.strip().lower()
        if not want:
            raise usage_error("a kind is required")
        kinds = await self.all_kinds()

        def names(info: KindInfo) -> list[str]:
            return [info.plural, info.singular, info.kind.lower(), *(s.lower() for s in info.short_names)]

        def rank(info: KindInfo, word: str) -> int:
            ns = names(info)
            return ns.index(word) if word in ns else len(ns)

        # Unqualified first (short names never contain dots); then NAME.GROUP and NAME.VERSION.GROUP.
        candidates = [i for i in kinds if want in names(i)]
        word = want
        if not candidates and "." in want:
            word, _, rest = want.partition(".")
            candidates = [i for i in kinds if word in names(i)
                          and rest in (i.group.lower(), f"{i.resource.version}.{i.group}".lower())]
            if not candidates:  # a version that is not the preferred one
                version, _, group = rest.partition(".")
                gv = f"{group}/{version}"
                with contextlib.suppress(NotFound):
                    candidates = [i for i in await self.kinds_in(gv) if word in names(i)]
        if not candidates:
            raise CLIError(f'the server doesn\'t have a resource type "{name}"')
        candidates.sort(key=lambda i: min(rank(i, word), 3))  # stable: core, then groups in server order
        return candidates[0]


