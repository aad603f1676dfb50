"""setpoint's own kinds, declared once as classes.

Each class is the kind's definition: the CustomResourceDefinition the server installs
(``setpoint/crds/*.yaml``) is generated from it by ``make crds`` (``python -m setpoint.kinds``),
and a test holds the checked-in YAML to the generated. Controllers and users may take the classes
as typed objects (``await client.get(ProcessSet, "web", namespace="default")``).
"""

from __future__ import annotations

import importlib
from typing import Any

# The CRD file of each kind, and where its class is declared.
CRD_FILES: dict[str, str] = {
    "processsets.yaml": "setpoint.kinds.processset:ProcessSet",
    "nodes.yaml": "setpoint.kinds.node:Node",
    "loadbalancers.yaml": "setpoint.kinds.loadbalancer:LoadBalancer",
    "templates.yaml": "setpoint.kinds.template:Template",
    "stacks.yaml": "setpoint.kinds.stack:Stack",
    "aws-vpcs.yaml": "setpoint.kinds.aws:VPC",
    "aws-subnets.yaml": "setpoint.kinds.aws:Subnet",
    "aws-securitygroups.yaml": "setpoint.kinds.aws:SecurityGroup",
    "aws-instances.yaml": "setpoint.kinds.aws:Instance",
    "aws-buckets.yaml": "setpoint.kinds.aws:Bucket",
    "aws-targetgroups.yaml": "setpoint.kinds.aws:TargetGroup",
    "aws-elasticloadbalancers.yaml": "setpoint.kinds.aws:ElasticLoadBalancer",
    "aws-reapers.yaml": "setpoint.kinds.aws:Reaper",
}


def kind_class(ref: str) -> type[Any]:
    module, _, name = ref.partition(":")
    cls: type[Any] = getattr(importlib.import_module(module), name)
    return cls


def crd_texts() -> dict[str, str]:
    """Each CRD file's name and the YAML generated from its class, as ``make crds`` writes it."""
    import yaml

    from setpoint.crdgen import crd

    out: dict[str, str] = {}
    for file, ref in CRD_FILES.items():
        header = f"# Generated from {ref} by `make crds`: change the class, not this file.\n"
        out[file] = header + yaml.safe_dump(crd(kind_class(ref)), sort_keys=False, width=100)
    return out
