"""kopf operators the bench runs as the reference: files of their own, handed to ``kopf run``."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT_HANDLERS = HERE / "agent_handlers.py"  # bench/agent.py: reconciles per update under a flood
CLIENT_OPERATOR = HERE / "client_operator.py"  # bench/clients.py: cold start and event rate
