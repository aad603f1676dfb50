"""The cloud driver: AWS resources (VPC, Subnet, SecurityGroup, Instance, S3 Bucket) as kinds of
group ``aws.setpoint.dev``, created exactly once (found by owner tag before any create, client
tokens where the API takes them), drift put back, failures classified; and the inventory the
reaper compares with desired objects. boto3 is an optional dependency: ``pip install 'setpoint[aws]'``.
"""

from setpoint.drivers.aws.driver import AwsDriver, resource
from setpoint.drivers.aws.kinds import KINDS, OWNER, OWNER_KIND, OWNER_UID

__all__ = ["KINDS", "OWNER", "OWNER_KIND", "OWNER_UID", "AwsDriver", "resource"]
