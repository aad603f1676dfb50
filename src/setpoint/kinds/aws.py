"""The AWS kinds setpoint's cloud controller manages (VPCs, subnets, instances, load balancers and
the rest, in AWS or an AWS-compatible API), and the Reaper that finds what none of them owns."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.crdgen import KindInfo
from setpoint.kinds.common import Condition, Kind, NonEmpty

GROUP = "aws.setpoint.dev"
CATEGORIES = ("aws", "setpoint")

READY_COLUMN = ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status')
AGE_COLUMN = ("Age", "date", ".metadata.creationTimestamp")

Region = Annotated[str, Meta(description="The AWS region.")]
EndpointUrl = Annotated[str, Meta(description="An AWS-compatible API's URL instead of AWS's own (credentials from "
                                              "the controller's environment or profile).")]
Port = Annotated[int, Meta(ge=1, le=65535)]
# A security group rule's port; -1 is AWS's "all" (every port, or every ICMP type).
RulePort = Annotated[int, Meta(ge=-1, le=65535)]
Cidr = Annotated[str, Meta(pattern=r"^\d+\.\d+\.\d+\.\d+/\d+$")]
Protocol = Literal["HTTP", "HTTPS", "TCP"]


class AwsSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a cloud resource lives: what every AWS kind's spec starts with."""

    region: Region = "us-east-1"
    endpointUrl: EndpointUrl | UnsetType = UNSET


class AwsStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What every AWS kind's status has besides its own fields."""

    observedGeneration: int | UnsetType = UNSET
    conditions: list[Condition] | UnsetType = UNSET


# VPC


class VPCSpec(AwsSpec, kw_only=True, omit_defaults=True):
    cidrBlock: Cidr


class VPCStatus(AwsStatus, kw_only=True, omit_defaults=True):
    vpcId: str | UnsetType = UNSET
    state: str | UnsetType = UNSET
    cidrBlock: str | UnsetType = UNSET


class VPC(Kind, kw_only=True, omit_defaults=True):
    """A VPC in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="vpcs", singular="vpc", categories=CATEGORIES,
        printer_columns=(("VPC ID", "string", ".status.vpcId"), ("CIDR", "string", ".spec.cidrBlock"),
                         READY_COLUMN, AGE_COLUMN))
    spec: VPCSpec | UnsetType = UNSET
    status: VPCStatus | UnsetType = UNSET


# Subnet


class SubnetSpec(AwsSpec, kw_only=True, omit_defaults=True):
    vpcRef: Annotated[str, Meta(min_length=1, description="The VPC object (same namespace).")]
    cidrBlock: Cidr
    availabilityZone: str | UnsetType = UNSET


class SubnetStatus(AwsStatus, kw_only=True, omit_defaults=True):
    subnetId: str | UnsetType = UNSET
    vpcId: str | UnsetType = UNSET
    state: str | UnsetType = UNSET
    availabilityZone: str | UnsetType = UNSET


class Subnet(Kind, kw_only=True, omit_defaults=True):
    """A subnet in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="subnets", singular="subnet", categories=CATEGORIES,
        printer_columns=(("Subnet ID", "string", ".status.subnetId"), ("CIDR", "string", ".spec.cidrBlock"),
                         READY_COLUMN, AGE_COLUMN))
    spec: SubnetSpec | UnsetType = UNSET
    status: SubnetStatus | UnsetType = UNSET


# SecurityGroup


class IngressRule(msgspec.Struct, kw_only=True, omit_defaults=True):
    protocol: str = "tcp"
    fromPort: RulePort
    toPort: Annotated[RulePort, Meta(description="Default: fromPort (a single port).")] | UnsetType = UNSET
    cidr: str = "0.0.0.0/0"


class SecurityGroupSpec(AwsSpec, kw_only=True, omit_defaults=True):
    vpcRef: NonEmpty
    description: str | UnsetType = UNSET
    ingress: list[IngressRule] | UnsetType = UNSET


class SecurityGroupStatus(AwsStatus, kw_only=True, omit_defaults=True):
    groupId: str | UnsetType = UNSET
    vpcId: str | UnsetType = UNSET


class SecurityGroup(Kind, kw_only=True, omit_defaults=True):
    """A security group in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="securitygroups", singular="securitygroup", categories=CATEGORIES,
        printer_columns=(("Group ID", "string", ".status.groupId"), READY_COLUMN, AGE_COLUMN))
    spec: SecurityGroupSpec | UnsetType = UNSET
    status: SecurityGroupStatus | UnsetType = UNSET


# Instance


class NetworkInterface(msgspec.Struct, kw_only=True, omit_defaults=True):
    subnetRef: NonEmpty
    securityGroupRefs: list[str] | UnsetType = UNSET


class InstanceSpec(AwsSpec, kw_only=True, omit_defaults=True):
    imageId: NonEmpty
    instanceType: str = "t3.micro"
    subnetRef: str | UnsetType = UNSET
    securityGroupRefs: list[str] | UnsetType = UNSET
    networkInterfaces: Annotated[list[NetworkInterface], Meta(
        max_length=8,
        description="Network interfaces in order (device 0 first), each in a subnet with its own security groups; "
                    "instead of subnetRef and securityGroupRefs, for an instance on several networks.",
    )] | UnsetType = UNSET


class NetworkInterfaceStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    networkInterfaceId: str | UnsetType = UNSET
    subnetId: str | UnsetType = UNSET
    privateIp: str | UnsetType = UNSET


class InstanceStatus(AwsStatus, kw_only=True, omit_defaults=True):
    instanceId: str | UnsetType = UNSET
    state: str | UnsetType = UNSET
    privateIp: str | UnsetType = UNSET
    instanceType: str | UnsetType = UNSET
    networkInterfaces: list[NetworkInterfaceStatus] | UnsetType = UNSET


class Instance(Kind, kw_only=True, omit_defaults=True):
    """An EC2 instance in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="instances", singular="instance", categories=CATEGORIES,
        printer_columns=(("Instance ID", "string", ".status.instanceId"), ("State", "string", ".status.state"),
                         ("Type", "string", ".spec.instanceType"), READY_COLUMN, AGE_COLUMN))
    spec: InstanceSpec | UnsetType = UNSET
    status: InstanceStatus | UnsetType = UNSET


# Bucket


class BucketSpec(AwsSpec, kw_only=True, omit_defaults=True):
    bucketName: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                                    description="Default: setpoint-UID.")] | UnsetType = UNSET


class BucketStatus(AwsStatus, kw_only=True, omit_defaults=True):
    bucketName: str | UnsetType = UNSET
    arn: str | UnsetType = UNSET


class Bucket(Kind, kw_only=True, omit_defaults=True):
    """An S3 bucket in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="buckets", singular="bucket", categories=CATEGORIES,
        printer_columns=(("Bucket", "string", ".status.bucketName"), READY_COLUMN, AGE_COLUMN))
    spec: BucketSpec = msgspec.field(default_factory=BucketSpec)
    status: BucketStatus | UnsetType = UNSET


# TargetGroup


class TargetGroupSpec(AwsSpec, kw_only=True, omit_defaults=True):
    vpcRef: NonEmpty
    port: Port = 80
    protocol: Protocol = "HTTP"
    instanceRefs: Annotated[list[str], Meta(
        description="Instance objects (same namespace) registered as targets.")] | UnsetType = UNSET


class TargetGroupStatus(AwsStatus, kw_only=True, omit_defaults=True):
    targetGroupArn: str | UnsetType = UNSET
    targets: list[str] | UnsetType = UNSET


class TargetGroup(Kind, kw_only=True, omit_defaults=True):
    """An ELBv2 target group in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="targetgroups", singular="targetgroup", short_names=("tg",), categories=CATEGORIES,
        printer_columns=(("ARN", "string", ".status.targetGroupArn"), READY_COLUMN, AGE_COLUMN))
    spec: TargetGroupSpec | UnsetType = UNSET
    status: TargetGroupStatus | UnsetType = UNSET


# ElasticLoadBalancer


class Listener(msgspec.Struct, kw_only=True, omit_defaults=True):
    port: Port
    protocol: Protocol = "HTTP"
    targetGroupRef: str


class ElasticLoadBalancerSpec(AwsSpec, kw_only=True, omit_defaults=True):
    subnetRefs: Annotated[list[str], Meta(min_length=2)]
    securityGroupRefs: list[str] | UnsetType = UNSET
    scheme: Literal["internet-facing", "internal"] = "internet-facing"
    type: Literal["application", "network"] = "application"
    listeners: list[Listener] | UnsetType = UNSET


class ElasticLoadBalancerStatus(AwsStatus, kw_only=True, omit_defaults=True):
    loadBalancerArn: str | UnsetType = UNSET
    dnsName: str | UnsetType = UNSET
    state: str | UnsetType = UNSET


class ElasticLoadBalancer(Kind, kw_only=True, omit_defaults=True):
    """An ELBv2 load balancer in AWS (or an AWS-compatible API), managed by setpoint cloud-controller."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="elasticloadbalancers", singular="elasticloadbalancer", short_names=("elb",),
        categories=CATEGORIES,
        printer_columns=(("DNS name", "string", ".status.dnsName"), ("State", "string", ".status.state"),
                         READY_COLUMN, AGE_COLUMN))
    spec: ElasticLoadBalancerSpec | UnsetType = UNSET
    status: ElasticLoadBalancerStatus | UnsetType = UNSET


# Reaper


class ReaperSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    # A list default is made afresh for each object, so the schema cannot see it: it is written out.
    regions: Annotated[list[str], Meta(extra_json_schema={"default": ["us-east-1"]})] = msgspec.field(
        default_factory=lambda: ["us-east-1"])
    endpointUrl: EndpointUrl | UnsetType = UNSET
    intervalSeconds: Annotated[float, Meta(ge=1)] = 3600
    delete: Annotated[bool, Meta(description="Delete orphans older than olderThanSeconds.")] = False
    olderThanSeconds: Annotated[float, Meta(ge=0)] = 3600


class Orphan(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: str | UnsetType = UNSET
    id: str | UnsetType = UNSET
    region: str | UnsetType = UNSET
    why: str | UnsetType = UNSET
    owner: str | UnsetType = UNSET
    ownerUid: str | UnsetType | None = UNSET
    ageSeconds: float | UnsetType | None = UNSET
    monthlyCost: float | UnsetType = UNSET


class ReaperStatus(AwsStatus, kw_only=True, omit_defaults=True):
    lastRunTime: str | UnsetType = UNSET
    examined: int | UnsetType = UNSET
    orphanCount: int | UnsetType = UNSET
    monthlyCost: float | UnsetType = UNSET
    orphans: Annotated[list[Orphan], Meta(description="The first 100.")] | UnsetType = UNSET
    deleted: list[str] | UnsetType = UNSET
    failed: list[str] | UnsetType = UNSET


class Reaper(Kind, kw_only=True, omit_defaults=True):
    """setpoint reap on a schedule: the cloud resources no object owns, with their cost, in status;
    deleted when delete is true."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group=GROUP, plural="reapers", singular="reaper", categories=CATEGORIES,
        printer_columns=(("Orphans", "integer", ".status.orphanCount"), ("$/month", "number", ".status.monthlyCost"),
                         ("Last run", "date", ".status.lastRunTime"), AGE_COLUMN))
    spec: ReaperSpec = msgspec.field(default_factory=ReaperSpec)
    status: ReaperStatus | UnsetType = UNSET
