"""Raw durable SQLite commits on this disk: WAL, synchronous=FULL, ~500-byte rows."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def commits(path: Path, rows_per_commit: int, seconds: float) -> dict[str, float]:
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS kv (rev INTEGER PRIMARY KEY, name TEXT, value BLOB)")
        value = b"x" * 500
        rev = db.execute("SELECT coalesce(max(rev), 0) FROM kv").fetchone()[0]
        n_commits = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            rows = []
            for _ in range(rows_per_commit):
                rev += 1
                rows.append((rev, f"row-{rev}", value))
            db.execute("BEGIN")
            db.executemany("INSERT INTO kv (rev, name, value) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            n_commits += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        elapsed = now - t0
    finally:
        db.close()
    return {"rows_per_commit": rows_per_commit, "seconds": round(elapsed, 3),
            "commits_per_s": round(n_commits / elapsed, 1),
            "rows_per_s": round(n_commits * rows_per_commit / elapsed, 1)}
