"""setpoint: desired-state orchestration with a Kubernetes-style control plane."""

__version__ = "0.1.0"
