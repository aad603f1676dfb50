"""The cloud resources setpoint manages, one class each: how to find one by its owner tag, create
it (with the object's uid in its tags, and a client token where the API takes one), bring it
back in line, delete it, and report it.

Finding by tag is what makes a create exactly-once: before any create the driver looks for a
resource tagged with the object's uid, so a create whose reply was lost is found, not repeated
(a client token alone is not enough: not every API takes one, and not every AWS-compatible API
honours it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from setpoint.agent.errors import NotReady, Permanent
from setpoint.types import Object

OWNER_UID = "setpoint.dev/owner-uid"
OWNER_KIND = "setpoint.dev/owner-kind"
OWNER = "setpoint.dev/owner"
GROUP = "aws.setpoint.dev"


def owner_tags(obj: Object, kind: str) -> list[dict[str, str]]:
    meta = obj["metadata"]
    return [{"Key": OWNER_UID, "Value": str(meta["uid"])}, {"Key": OWNER_KIND, "Value": kind},
            {"Key": OWNER, "Value": f"{meta.get('namespace', '')}/{meta['name']}"},
            {"Key": "Name", "Value": str(meta["name"])}]


def tag_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or [] if "Key" in t}


def client_token(obj: Object, action: str) -> str:
    """The same on every retry of one desired state, at most 64 characters (EC2's limit)."""
    meta = obj["metadata"]
    return hashlib.sha256(f"{meta['uid']}:{meta.get('generation', 1)}:{action}".encode()).hexdigest()[:64]


@dataclass
class Refs:
    """Ids of the objects this one refers to, resolved by the driver before it acts."""

    vpc_id: str = ""
    subnet_id: str = ""
    group_ids: tuple[str, ...] = ()
    subnet_ids: tuple[str, ...] = ()
    instance_ids: tuple[str, ...] = ()
    interfaces: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (subnet id, group ids) per network interface
    target_group_arns: dict[str, str] = field(default_factory=dict)  # name -> ARN


class CloudKind:
    kind: ClassVar[str]
    plural: ClassVar[str]
    service: ClassVar[str] = "ec2"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        raise NotImplementedError

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        raise NotImplementedError

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        """Put back what was changed behind setpoint's back (what can be changed in place)."""
        return current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        raise NotImplementedError

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def ready(self, current: dict[str, Any]) -> bool:
        return True


def immutable(field: str, have: Any, want: Any) -> None:
    """A field the cloud cannot change in place: refuse it, naming the field, rather than replace
    a resource (and lose what runs on it) behind the user's back."""
    if want not in (None, "") and have not in (None, "") and have != want:
        raise Permanent(f"spec.{field} cannot be changed in place (the resource has {have!r}, the object asks "
                        f"for {want!r}): put the old value back, or delete the object and create it anew",
                        reason="Immutable")


def _filters(uid: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{OWNER_UID}", "Values": [uid]}]


class VPC(CloudKind):
    kind, plural = "VPC", "vpcs"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        found = (await api("DescribeVpcs", "describe_vpcs", Filters=_filters(uid)))["Vpcs"]
        return found[0] if found else None

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        spec = obj["spec"]
        out = await api("CreateVpc", "create_vpc", CidrBlock=spec["cidrBlock"],
                        TagSpecifications=[{"ResourceType": "vpc", "Tags": owner_tags(obj, self.kind)}])
        vpc: dict[str, Any] = out["Vpc"]
        return vpc

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        immutable("cidrBlock", current.get("CidrBlock"), obj["spec"].get("cidrBlock"))
        return current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("DeleteVpc", "delete_vpc", VpcId=current["VpcId"])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"vpcId": current["VpcId"], "state": current.get("State", ""), "cidrBlock": current.get("CidrBlock")}

    def ready(self, current: dict[str, Any]) -> bool:
        return current.get("State") == "available"


class Subnet(CloudKind):
    kind, plural = "Subnet", "subnets"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        found = (await api("DescribeSubnets", "describe_subnets", Filters=_filters(uid)))["Subnets"]
        return found[0] if found else None

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        spec = obj["spec"]
        kw: dict[str, Any] = {"VpcId": refs.vpc_id, "CidrBlock": spec["cidrBlock"],
                              "TagSpecifications": [{"ResourceType": "subnet", "Tags": owner_tags(obj, self.kind)}]}
        if spec.get("availabilityZone"):
            kw["AvailabilityZone"] = spec["availabilityZone"]
        subnet: dict[str, Any] = (await api("CreateSubnet", "create_subnet", **kw))["Subnet"]
        return subnet

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        spec = obj["spec"]
        immutable("cidrBlock", current.get("CidrBlock"), spec.get("cidrBlock"))
        immutable("availabilityZone", current.get("AvailabilityZone"), spec.get("availabilityZone"))
        immutable("vpcRef", current.get("VpcId"), refs.vpc_id)
        return current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("DeleteSubnet", "delete_subnet", SubnetId=current["SubnetId"])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"subnetId": current["SubnetId"], "vpcId": current.get("VpcId"), "state": current.get("State", ""),
                "availabilityZone": current.get("AvailabilityZone")}

    def ready(self, current: dict[str, Any]) -> bool:
        return current.get("State") == "available"


class SecurityGroup(CloudKind):
    kind, plural = "SecurityGroup", "securitygroups"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        found = (await api("DescribeSecurityGroups", "describe_security_groups", Filters=_filters(uid)))
        groups = found["SecurityGroups"]
        return groups[0] if groups else None

    @staticmethod
    def _permissions(obj: Object) -> list[dict[str, Any]]:
        return [{"IpProtocol": r.get("protocol", "tcp"), "FromPort": r["fromPort"],
                 "ToPort": r.get("toPort", r["fromPort"]), "IpRanges": [{"CidrIp": r.get("cidr", "0.0.0.0/0")}]}
                for r in obj["spec"].get("ingress") or []]

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        meta = obj["metadata"]
        out = await api("CreateSecurityGroup", "create_security_group", VpcId=refs.vpc_id,
                        GroupName=f"{meta['name']}-{str(meta['uid'])[:8]}",
                        Description=obj["spec"].get("description")
                        or f"setpoint {meta.get('namespace')}/{meta['name']}",
                        TagSpecifications=[{"ResourceType": "security-group", "Tags": owner_tags(obj, self.kind)}])
        perms = self._permissions(obj)
        if perms:
            await api("AuthorizeSecurityGroupIngress", "authorize_security_group_ingress", GroupId=out["GroupId"],
                      IpPermissions=perms)
        return await self.find(api, str(meta["uid"])) or {"GroupId": out["GroupId"]}

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        def key(p: dict[str, Any]) -> set[tuple[Any, ...]]:
            return {(p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort"), r.get("CidrIp"))
                    for r in p.get("IpRanges") or []}

        want: set[tuple[Any, ...]] = set()
        for p in self._permissions(obj):
            want |= key(p)
        have: set[tuple[Any, ...]] = set()
        for p in current.get("IpPermissions") or []:
            have |= key(p)
        if want - have:
            await api("AuthorizeSecurityGroupIngress", "authorize_security_group_ingress", GroupId=current["GroupId"],
                      IpPermissions=[as_perm(t) for t in sorted(want - have, key=str)])
        if have - want:
            await api("RevokeSecurityGroupIngress", "revoke_security_group_ingress", GroupId=current["GroupId"],
                      IpPermissions=[as_perm(t) for t in sorted(have - want, key=str)])
        if want != have:
            return await self.find(api, str(obj["metadata"]["uid"])) or current
        return current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("DeleteSecurityGroup", "delete_security_group", GroupId=current["GroupId"])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"groupId": current["GroupId"], "vpcId": current.get("VpcId")}


def as_perm(t: tuple[Any, ...]) -> dict[str, Any]:
    return {"IpProtocol": t[0], "FromPort": t[1], "ToPort": t[2], "IpRanges": [{"CidrIp": t[3]}]}


class Instance(CloudKind):
    kind, plural = "Instance", "instances"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        filters = [*_filters(uid), {"Name": "instance-state-name",
                                    "Values": ["pending", "running", "stopping", "stopped"]}]
        out = await api("DescribeInstances", "describe_instances", Filters=filters)
        found = [i for r in out["Reservations"] for i in r["Instances"]]
        return found[0] if found else None

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        spec = obj["spec"]
        kw: dict[str, Any] = {
            "ImageId": spec["imageId"], "InstanceType": spec.get("instanceType", "t3.micro"), "MinCount": 1,
            "MaxCount": 1, "ClientToken": client_token(obj, "run"),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": owner_tags(obj, self.kind)}]}
        if refs.interfaces:
            kw["NetworkInterfaces"] = [
                {"DeviceIndex": i, "SubnetId": subnet, **({"Groups": list(groups)} if groups else {})}
                for i, (subnet, groups) in enumerate(refs.interfaces)]
        if refs.subnet_id:
            kw["SubnetId"] = refs.subnet_id
        if refs.group_ids:
            kw["SecurityGroupIds"] = list(refs.group_ids)
        instance: dict[str, Any] = (await api("RunInstances", "run_instances", **kw))["Instances"][0]
        return instance

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        """A new instance type needs the instance stopped: stop it, wait (NotReady), change the
        type, start it. An instance stopped behind setpoint's back is started again; new
        security groups are set in place. Image and subnet cannot change."""
        spec, iid = obj["spec"], current["InstanceId"]
        immutable("imageId", current.get("ImageId"), spec.get("imageId"))
        immutable("subnetRef", current.get("SubnetId"), refs.subnet_id)
        if refs.interfaces:
            immutable("networkInterfaces", _interface_subnets(current), [subnet for subnet, _ in refs.interfaces])
        state = (current.get("State") or {}).get("Name")
        want_type = spec.get("instanceType", "t3.micro")
        changed = False
        if refs.group_ids and sorted(g["GroupId"] for g in current.get("SecurityGroups") or []) != sorted(
                refs.group_ids):
            await api("ModifyInstanceAttribute", "modify_instance_attribute", InstanceId=iid,
                      Groups=list(refs.group_ids))
            changed = True
        if current.get("InstanceType") != want_type:
            if state in ("pending", "running"):
                await api("StopInstances", "stop_instances", InstanceIds=[iid])
                raise NotReady(f"instance {iid} is stopping to change its type to {want_type}",
                               retry_after=1.0, reason="Resizing")
            if state == "stopping":
                raise NotReady(f"instance {iid} is stopping to change its type to {want_type}",
                               retry_after=1.0, reason="Resizing")
            await api("ModifyInstanceAttribute", "modify_instance_attribute", InstanceId=iid,
                      InstanceType={"Value": want_type})
            state = "stopped"
        if state == "stopped":
            await api("StartInstances", "start_instances", InstanceIds=[iid])
            changed = True
        return (await self.find(api, str(obj["metadata"]["uid"])) or current) if changed else current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("TerminateInstances", "terminate_instances", InstanceIds=[current["InstanceId"]])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        out = {"instanceId": current["InstanceId"], "state": (current.get("State") or {}).get("Name", ""),
               "privateIp": current.get("PrivateIpAddress", ""), "instanceType": current.get("InstanceType")}
        nics = sorted(current.get("NetworkInterfaces") or [], key=lambda n: (n.get("Attachment") or {})
                      .get("DeviceIndex", 0))
        if nics:
            out["networkInterfaces"] = [{"networkInterfaceId": n.get("NetworkInterfaceId", ""),
                                         "subnetId": n.get("SubnetId", ""), "privateIp": n.get("PrivateIpAddress", "")}
                                        for n in nics]
        return out

    def ready(self, current: dict[str, Any]) -> bool:
        return (current.get("State") or {}).get("Name") == "running"


def _interface_subnets(instance: dict[str, Any]) -> list[str]:
    nics = sorted(instance.get("NetworkInterfaces") or [], key=lambda n: (n.get("Attachment") or {})
                  .get("DeviceIndex", 0))
    return [str(n.get("SubnetId", "")) for n in nics]


class Bucket(CloudKind):
    kind, plural, service = "Bucket", "buckets", "s3"

    @staticmethod
    def bucket_name(obj: Object) -> str:
        return str(obj["spec"].get("bucketName") or f"setpoint-{obj['metadata']['uid']}")

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        raise NotImplementedError  # buckets are found by name: see AwsDriver.observe

    async def find_named(self, api: Any, name: str, uid: str) -> dict[str, Any] | None:
        from setpoint.agent.errors import Permanent as _P

        try:
            tags = (await api("GetBucketTagging", "get_bucket_tagging", Bucket=name))["TagSet"]
        except _P as e:  # NoSuchBucket, NoSuchTagSet
            if "NoSuchBucket" in e.message:
                return None
            tags = []
        owner = tag_dict(tags).get(OWNER_UID)
        if owner not in (None, uid):
            raise Permanent(f"bucket {name} belongs to another object (uid {owner})", reason="NameTaken")
        return {"Name": name, "Tags": tags}

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        name, region = self.bucket_name(obj), obj["spec"].get("region", "us-east-1")
        kw: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        await api("CreateBucket", "create_bucket", **kw)
        await api("PutBucketTagging", "put_bucket_tagging", Bucket=name,
                  Tagging={"TagSet": owner_tags(obj, self.kind)})
        return {"Name": name, "Tags": owner_tags(obj, self.kind)}

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        if tag_dict(current.get("Tags")).get(OWNER_UID) != str(obj["metadata"]["uid"]):
            await api("PutBucketTagging", "put_bucket_tagging", Bucket=current["Name"],
                      Tagging={"TagSet": owner_tags(obj, self.kind)})
            return {**current, "Tags": owner_tags(obj, self.kind)}
        return current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("DeleteBucket", "delete_bucket", Bucket=current["Name"])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"bucketName": current["Name"], "arn": f"arn:aws:s3:::{current['Name']}"}


def elb_name(meta: dict[str, Any]) -> str:
    """ELBv2 names: 32 letters, digits or hyphens, not ending with one; from the uid, so unique."""
    return "sp-" + str(meta["uid"]).replace("-", "")[:29]


async def _elb_find(api: Any, action: str, method: str, key: str, arn_key: str, uid: str) -> dict[str, Any] | None:
    """ELBv2 has no tag filter on its listings: list, then read the tags twenty at a time."""
    items = (await api(action, method))[key]
    for start in range(0, len(items), 20):
        arns = [i[arn_key] for i in items[start:start + 20]]
        for d in (await api("DescribeTags", "describe_tags", ResourceArns=arns))["TagDescriptions"]:
            if tag_dict(d.get("Tags")).get(OWNER_UID) == uid:
                found: dict[str, Any] = next(i for i in items if i[arn_key] == d["ResourceArn"])
                return found
    return None


class TargetGroup(CloudKind):
    kind, plural, service = "TargetGroup", "targetgroups", "elbv2"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        return await _elb_find(api, "DescribeTargetGroups", "describe_target_groups", "TargetGroups",
                               "TargetGroupArn", uid)

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        spec, meta = obj["spec"], obj["metadata"]
        out = await api("CreateTargetGroup", "create_target_group", Name=elb_name(meta),
                        Protocol=spec.get("protocol", "HTTP"), Port=int(spec.get("port", 80)), VpcId=refs.vpc_id,
                        TargetType="instance", Tags=owner_tags(obj, self.kind))
        group: dict[str, Any] = out["TargetGroups"][0]
        return await self.align(api, obj, refs, group)

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        spec = obj["spec"]
        immutable("port", current.get("Port"), int(spec.get("port", 80)))
        immutable("protocol", current.get("Protocol"), spec.get("protocol", "HTTP"))
        immutable("vpcRef", current.get("VpcId"), refs.vpc_id)
        arn = current["TargetGroupArn"]
        health = await api("DescribeTargetHealth", "describe_target_health", TargetGroupArn=arn)
        have = {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}
        want = set(refs.instance_ids)
        if want - have:
            await api("RegisterTargets", "register_targets", TargetGroupArn=arn,
                      Targets=[{"Id": i} for i in sorted(want - have)])
        if have - want:
            await api("DeregisterTargets", "deregister_targets", TargetGroupArn=arn,
                      Targets=[{"Id": i} for i in sorted(have - want)])
        return {**current, "Targets": sorted(want)}

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("DeleteTargetGroup", "delete_target_group", TargetGroupArn=current["TargetGroupArn"])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"targetGroupArn": current["TargetGroupArn"], "targets": current.get("Targets", [])}


class ElasticLoadBalancer(CloudKind):
    """An ELBv2 load balancer (application or network). Named apart from setpoint.dev's
    LoadBalancer (HAProxy, Envoy on a node) so that ``loadbalancers`` means one kind."""

    kind, plural, service = "ElasticLoadBalancer", "elasticloadbalancers", "elbv2"

    async def find(self, api: Any, uid: str) -> dict[str, Any] | None:
        return await _elb_find(api, "DescribeLoadBalancers", "describe_load_balancers", "LoadBalancers",
                               "LoadBalancerArn", uid)

    async def create(self, api: Any, obj: Object, refs: Refs) -> dict[str, Any]:
        spec, meta = obj["spec"], obj["metadata"]
        kw: dict[str, Any] = {"Name": elb_name(meta), "Subnets": list(refs.subnet_ids),
                              "Scheme": spec.get("scheme", "internet-facing"), "Type": spec.get("type", "application"),
                              "Tags": owner_tags(obj, self.kind)}
        if refs.group_ids:
            kw["SecurityGroups"] = list(refs.group_ids)
        lb: dict[str, Any] = (await api("CreateLoadBalancer", "create_load_balancer", **kw))["LoadBalancers"][0]
        return await self.align(api, obj, refs, lb)

    async def align(self, api: Any, obj: Object, refs: Refs, current: dict[str, Any]) -> dict[str, Any]:
        """Listeners as the spec lists them: missing ones created, a changed target group
        switched in place, ones no longer listed deleted."""
        arn = current["LoadBalancerArn"]
        have = {(lst["Port"], lst["Protocol"]): lst for lst in
                (await api("DescribeListeners", "describe_listeners", LoadBalancerArn=arn))["Listeners"]}
        wanted: set[tuple[int, str]] = set()
        for lst in obj["spec"].get("listeners") or []:
            port, protocol = int(lst["port"]), str(lst.get("protocol", "HTTP"))
            wanted.add((port, protocol))
            target = require(refs.target_group_arns.get(str(lst["targetGroupRef"]), ""),
                             f"TargetGroup {lst['targetGroupRef']}")
            action = [{"Type": "forward", "TargetGroupArn": target}]
            existing = have.get((port, protocol))
            if existing is None:
                await api("CreateListener", "create_listener", LoadBalancerArn=arn, Port=port, Protocol=protocol,
                          DefaultActions=action)
            elif [a.get("TargetGroupArn") for a in existing.get("DefaultActions") or []] != [target]:
                await api("ModifyListener", "modify_listener", ListenerArn=existing["ListenerArn"],
                          DefaultActions=action)
        for key, lst in have.items():
            if key not in wanted:
                await api("DeleteListener", "delete_listener", ListenerArn=lst["ListenerArn"])
        return current

    async def delete(self, api: Any, current: dict[str, Any]) -> None:
        await api("DeleteLoadBalancer", "delete_load_balancer", LoadBalancerArn=current["LoadBalancerArn"])

    def status(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"loadBalancerArn": current["LoadBalancerArn"], "dnsName": current.get("DNSName", ""),
                "state": (current.get("State") or {}).get("Code", "")}

    def ready(self, current: dict[str, Any]) -> bool:
        return (current.get("State") or {}).get("Code") == "active"


KINDS: dict[str, CloudKind] = {k.plural: k for k in (VPC(), Subnet(), SecurityGroup(), Instance(), Bucket(),
                                                      TargetGroup(), ElasticLoadBalancer())}


def require(value: str, what: str) -> str:
    if not value:
        raise NotReady(f"{what} has no id yet", retry_after=2.0, reason="DependencyNotReady")
    return value
