"""boto3 clients as setpoint uses them: one per (service, region, endpoint), made once, used from
worker threads (boto3 clients are thread-safe; its calls block, so they never run on the event
loop). botocore's own retries are off: after a lost reply setpoint looks the resource up before
it asks again, which botocore's blind resend cannot do for calls that do not deduplicate."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from setpoint.drivers.aws.errors import classify

T = TypeVar("T")


class Clients:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._session: Any = None

    def get(self, service: str, region: str, endpoint_url: str = "") -> Any:
        key = (service, region, endpoint_url)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                import boto3
                from botocore.config import Config

                if self._session is None:
                    self._session = boto3.session.Session()  # the standard chain: env, profile, role
                config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20,
                                user_agent_appid="setpoint")
                client = self._session.client(service, region_name=region, endpoint_url=endpoint_url or None,
                                              config=config)
                self._clients[key] = client
            return client

    async def call(self, client: Any, action: str, fn: Callable[..., T], **kw: Any) -> T:
        """``fn(**kw)`` in a worker thread; boto3's errors become setpoint's classes."""
        try:
            return await asyncio.to_thread(fn, **kw)
        except Exception as e:
            raise classify(e, action) from e
