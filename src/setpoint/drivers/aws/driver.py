"""The cloud driver: observe by owner tag, ensure (create once, align what drifted), delete
(waiting for dependents), for one kind of group ``aws.setpoint.dev``.

References between objects (a Subnet's ``vpcRef``, an Instance's ``subnetRef`` and
``securityGroupRefs``) name setpoint objects in the same namespace; the driver reads their status
for the cloud id, and a reference whose object has no id yet is NotReady, not an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from setpoint.agent.errors import NotReady, OperationId, Permanent
from setpoint.agent.retry import Backoff, RetryPolicy
from setpoint.client import Client, NotFound, Resource
from setpoint.drivers.aws.kinds import GROUP, KINDS, Bucket, CloudKind, Refs, immutable, require
from setpoint.drivers.aws.session import Clients
from setpoint.types import Object

VERSION = "v1alpha1"


def resource(plural: str) -> Resource:
    kind = KINDS[plural]
    return Resource(GROUP, VERSION, plural, namespaced=True, kind=kind.kind)


class AwsDriver:
    """A :class:`~setpoint.drivers.base.Driver` for one cloud kind."""

    # Throttling and lost replies: many quick attempts; a dependency: patiently, without limit.
    retry_policy = RetryPolicy(transient=Backoff(attempts=20, base=0.2, cap=30.0),
                               not_ready=Backoff(attempts=None, base=1.0, cap=15.0), deadline=None)

    def __init__(self, plural: str, client: Client, clients: Clients | None = None) -> None:
        self.kind: CloudKind = KINDS[plural]
        self.name = f"aws-{plural}"
        self.client = client
        self.clients = clients or Clients()

    def _api(self, obj: Object) -> Callable[..., Any]:
        spec = obj.get("spec") or {}
        region = str(spec.get("region") or "us-east-1")
        boto = self.clients.get(self.kind.service, region, str(spec.get("endpointUrl") or ""))

        async def api(action: str, method: str, **kw: Any) -> Any:
            return await self.clients.call(boto, action, getattr(boto, method), **kw)

        return api

    async def _id_of(self, obj: Object, plural: str, name: str, field: str) -> str:
        try:
            ref = await self.client.get(resource(plural), name, namespace=obj["metadata"].get("namespace"))
        except NotFound:
            raise NotReady(f"{resource(plural).kind} {name} does not exist (yet)", retry_after=2.0,
                           reason="DependencyNotFound") from None
        return require(str((ref.get("status") or {}).get(field) or ""), f"{resource(plural).kind} {name}")

    async def _refs(self, obj: Object) -> Refs:
        spec = obj.get("spec") or {}
        refs = Refs()
        if spec.get("vpcRef"):
            refs.vpc_id = await self._id_of(obj, "vpcs", spec["vpcRef"], "vpcId")
        if spec.get("subnetRef"):
            refs.subnet_id = await self._id_of(obj, "subnets", spec["subnetRef"], "subnetId")
        if spec.get("securityGroupRefs"):
            refs.group_ids = tuple([await self._id_of(obj, "securitygroups", g, "groupId")
                                    for g in spec["securityGroupRefs"]])
        if spec.get("networkInterfaces") and (spec.get("subnetRef") or spec.get("securityGroupRefs")):
            raise Permanent("spec.networkInterfaces cannot be combined with spec.subnetRef or "
                            "spec.securityGroupRefs: give each interface its subnet and groups", reason="InvalidSpec")
        interfaces = []
        for nic in spec.get("networkInterfaces") or []:
            subnet = await self._id_of(obj, "subnets", nic["subnetRef"], "subnetId")
            groups = tuple([await self._id_of(obj, "securitygroups", g, "groupId")
                            for g in nic.get("securityGroupRefs") or []])
            interfaces.append((subnet, groups))
        refs.interfaces = tuple(interfaces)
        if spec.get("subnetRefs"):
            refs.subnet_ids = tuple([await self._id_of(obj, "subnets", s, "subnetId") for s in spec["subnetRefs"]])
        if spec.get("instanceRefs"):
            refs.instance_ids = tuple([await self._id_of(obj, "instances", i, "instanceId")
                                       for i in spec["instanceRefs"]])
        for lst in spec.get("listeners") or []:
            name = str(lst.get("targetGroupRef", ""))
            if name and name not in refs.target_group_arns:
                refs.target_group_arns[name] = await self._id_of(obj, "targetgroups", name, "targetGroupArn")
        return refs

    async def observe(self, obj: Object) -> dict[str, Any] | None:
        api = self._api(obj)
        if isinstance(self.kind, Bucket):
            return await self.kind.find_named(api, Bucket.bucket_name(obj), str(obj["metadata"]["uid"]))
        return await self.kind.find(api, str(obj["metadata"]["uid"]))

    async def ensure(self, obj: Object, observed: dict[str, Any] | None, op: OperationId) -> dict[str, Any]:
        api = self._api(obj)
        if isinstance(self.kind, Bucket):  # found by name: a new name would be a second bucket
            immutable("bucketName", (obj.get("status") or {}).get("bucketName"), Bucket.bucket_name(obj))
        refs = await self._refs(obj)
        if observed is None:
            return await self.kind.create(api, obj, refs)
        return await self.kind.align(api, obj, refs, observed)

    async def delete(self, obj: Object, op: OperationId) -> None:
        current = await self.observe(obj)
        if current is not None:
            await self.kind.delete(self._api(obj), current)

    def status(self, observed: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return self.kind.status(observed), self.kind.ready(observed)


def check_spec(obj: Object) -> None:
    if not isinstance(obj.get("spec"), dict):
        raise Permanent("spec is required", reason="InvalidSpec")
