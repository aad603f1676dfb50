"""The resources setpoint's built-in controllers work on."""

from setpoint.client import Resource

PROCESSSETS = Resource("setpoint.dev", "v1alpha1", "processsets", namespaced=True, kind="ProcessSet")
NODES = Resource("setpoint.dev", "v1alpha1", "nodes", namespaced=False, kind="Node")
LEASES = Resource("coordination.k8s.io", "v1", "leases", namespaced=True, kind="Lease")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")
SECRETS = Resource("", "v1", "secrets", namespaced=True, kind="Secret")
LOADBALANCERS = Resource("setpoint.dev", "v1alpha1", "loadbalancers", namespaced=True, kind="LoadBalancer")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", namespaced=True, kind="EndpointSlice")
SERVICES = Resource("", "v1", "services", namespaced=True, kind="Service")
CONFIGMAPS = Resource("", "v1", "configmaps", namespaced=True, kind="ConfigMap")
STACKS = Resource("setpoint.dev", "v1alpha1", "stacks", namespaced=True, kind="Stack")
TEMPLATES = Resource("setpoint.dev", "v1alpha1", "templates", namespaced=True, kind="Template")

NODE_LEASE_NAMESPACE = "setpoint-node-lease"
SYSTEM_NAMESPACE = "setpoint-system"
PROCESS_FINALIZER = "setpoint.dev/processes"
