"""Bucket digests of a set of objects, computed the same way by the server (over its cache) and
by an agent (over its own), so that an agent back from a long absence fetches only what differs.

An object falls in bucket ``crc32(key) mod N`` (``key`` is ``namespace/name``, or ``name`` when
cluster-scoped; ``N`` a power of two); a bucket's digest is the XOR of ``crc32(key@resourceVersion)``
over its objects. Equal digests mean the same objects at the same revisions (up to a 2**-32 chance
per bucket); a changed, added or deleted object changes its bucket's digest. With about two
objects a bucket, 1% of 100,000 objects changed costs the digests (4 bytes a bucket) and about
2% of the objects, instead of all of them.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable

MAX_BUCKETS = 1 << 20


def bucket_count(objects: int) -> int:
    """About two objects a bucket: a power of two, at least 64."""
    n = 64
    while n < objects // 2 and n < MAX_BUCKETS:
        n *= 2
    return n


def valid_count(n: int) -> bool:
    return 1 <= n <= MAX_BUCKETS and n & (n - 1) == 0


def bucket_of(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) & (n - 1)


def digests(items: Iterable[tuple[str, str]], n: int) -> bytes:
    """``items``: (key, resourceVersion). Returns N little-endian 32-bit digests."""
    acc = [0] * n
    mask = n - 1
    crc32 = zlib.crc32
    for key, rv in items:
        k = key.encode()
        acc[crc32(k) & mask] ^= crc32(rv.encode(), crc32(k + b"@"))
    return b"".join(x.to_bytes(4, "little") for x in acc)


def encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def decode(text: str, n: int) -> bytes:
    raw = base64.b64decode(text)
    if len(raw) != 4 * n:
        raise ValueError(f"expected {n} digests, got {len(raw) // 4}")
    return raw


def differing(a: bytes, b: bytes) -> list[int]:
    """The buckets whose digests differ."""
    return [i for i in range(len(a) // 4) if a[4 * i:4 * i + 4] != b[4 * i:4 * i + 4]]
