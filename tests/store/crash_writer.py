"""Child process for the crash test: writes as fast as it can and prints every acknowledged
write as ``key revision value`` (one line, flushed), until it is killed."""

from __future__ import annotations

import asyncio
import sys

from setpoint.store import SQLiteBackend


async def main(path: str, writers: int) -> None:
    backend = SQLiteBackend(path)
    await backend.start()
    out = sys.stdout

    def ack(key: str, revision: int, value: bytes) -> None:
        out.write(f"{key} {revision} {value.decode()}\n")
        out.flush()

    async def writer(i: int) -> None:
        key = f"/crash/{i}"
        mine = await backend.create(key, b"0")
        ack(mine.key, mine.mod_revision, mine.value)
        n = 0
        while True:
            n += 1
            value = str(n).encode()
            if n % 10 == 0:  # mix creates of new keys in with the guarded updates
                kv = await backend.create(f"{key}/{n}", value)
            else:
                kv = mine = await backend.update(key, value, expected_revision=mine.mod_revision)
            ack(kv.key, kv.mod_revision, kv.value)

    print("ready", flush=True)
    await asyncio.gather(*(writer(i) for i in range(writers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
