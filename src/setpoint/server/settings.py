"""The API server's limits and timings, set by ``setpoint serve``'s options."""

from __future__ import annotations

import msgspec


class Settings(msgspec.Struct):
    max_body_bytes: int = 3 * 1024 * 1024 // 2
    max_object_bytes: int = 3 * 1024 * 1024 // 2  # etcd's default request limit, as kube keeps to
    watch_max_seconds: float = 1800.0
    bookmark_interval: float = 5.0
    cache_wait_seconds: float = 3.0
