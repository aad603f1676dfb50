"""The balancer processes' ends, seen as they happen: a pidfd (Linux 5.3) becomes readable when its
process exits, whether the agent started it or adopted it after a restart (it is then not our
child, and cannot be waited for). Both drivers restart a balancer that was killed at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path


class ExitWatch:
    def __init__(self) -> None:
        self._watches: dict[str, tuple[int, int]] = {}  # uid -> (pid, pidfd)

    def watch(self, uid: str, pid: int, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` once when process ``pid`` (the balancer of ``uid``) ends."""
        known = self._watches.get(uid)
        if known is not None and known[0] == pid:
            return
        self.unwatch(uid)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return

        def exited() -> None:
            self.unwatch(uid)
            on_exit()

        asyncio.get_running_loop().add_reader(fd, exited)
        self._watches[uid] = (pid, fd)

    def unwatch(self, uid: str) -> None:
        known = self._watches.pop(uid, None)
        if known is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(known[1])
            os.close(known[1])

    def close(self) -> None:
        for uid in list(self._watches):
            self.unwatch(uid)


async def exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for a process, not necessarily our child, to end."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        async with asyncio.timeout(timeout):
            await done
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def instance_dirs(state_dir: Path) -> set[str]:
    """The uids of the balancers whose files are under ``state_dir``."""
    if not state_dir.is_dir():
        return set()
    return {p.name for p in state_dir.iterdir() if p.is_dir()}
