"""How desired state travels from the API server to agents: watch (default), poll, NATS
interrupt and NATS JetStream command, behind the informer's one interface."""
