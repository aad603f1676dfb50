"""Commands run after a file changed: in a process group of their own, with a timeout that
kills the whole group (a shell's children included), and the tail of their output kept for the
status. Run off the event loop's thread only in the sense that they are subprocesses: waiting on
them is asynchronous."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

OUTPUT_TAIL = 2048


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_code: int | None  # None: killed at the timeout
    output: str  # the last OUTPUT_TAIL bytes of stdout and stderr together
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


async def run_command(command: str, timeout: float, cwd: str | None = None) -> CommandResult:
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True, cwd=cwd)
    assert proc.stdout is not None
    tail = bytearray()

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_TAIL]

    reader = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
            await reader
    except TimeoutError:
        kill_group(proc.pid)
        await proc.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        return CommandResult(None, tail.decode(errors="replace"), timed_out=True)
    except BaseException:
        kill_group(proc.pid)
        reader.cancel()
        raise
    return CommandResult(proc.returncode, tail.decode(errors="replace"))


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads: the command and everything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
