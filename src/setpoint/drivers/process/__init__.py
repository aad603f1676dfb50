"""The ProcessSet driver: supervises real OS processes on this host. Linux only.

For each ProcessSet it keeps ``spec.replicas`` processes running, numbered ``0..replicas-1``:

- a missing replica is started; a replica whose index is ``>= replicas`` is stopped (SIGTERM to
  every process of its session, SIGKILL after ``stopGracePeriodSeconds``);
- a replica that died is restarted, at once the first time, then after a delay that starts at
  ``restartBackoff.initialSeconds`` and doubles up to ``maxSeconds``; the delay resets once a
  process has run for ``max(backoff_reset_seconds, maxSeconds)``. While a replica waits,
  :meth:`ProcessDriver.ensure` does everything else and then raises :class:`ProcessesNotReady`
  (a :class:`~setpoint.drivers.base.NotReady`) whose ``retry_after`` is the time left;
- a change to ``command``, ``args``, ``env``, ``workingDir`` or ``portEnv`` (compared by hash)
  replaces the processes;
- with ``portEnv`` set, each replica gets a free TCP port in that variable, keeps it across
  restarts while it is free, and counts as ready only once something listens on it (until then
  its state is ``Starting`` and ``ensure`` raises :class:`ProcessesNotReady` so that it is
  looked at again soon).

Every process is started in a session of its own, with stdin from /dev/null and stdout and
stderr appended to ``<state_dir>/<uid>/<replica>.log`` (copied to ``.log.1`` and truncated when
it grows past ``max_log_bytes``, checked on every ``ensure``). Its environment is the agent's,
then ``spec.env``, then ``SETPOINT_PROCESSSET`` (namespace/name), ``SETPOINT_PROCESSSET_UID``,
``SETPOINT_REPLICA`` and the ``portEnv`` variable.

State survives the agent: ``<state_dir>/<uid>/<replica>.json`` holds the pid, the process start
time (field 22 of ``/proc/<pid>/stat``, so a reused pid is never mistaken for ours), the port,
the restart count and the spec hash, written atomically. A new driver over the same directory
adopts the processes that are still alive and restarts the rest. A record is written before each
spawn as well, so a spawn interrupted by a crash is found again by its environment variables.

Linux specifics: ``/proc``, ``pidfd_open`` (Linux 5.3) for waiting on exits without polling and
for signalling without pid-reuse races, ``/proc/net/tcp{,6}`` for the listening check.
"""

from setpoint.drivers.process.driver import BACKOFF_RESET_SECONDS, KILL_TIMEOUT, MAX_LOG_BYTES, ProcessDriver
from setpoint.drivers.process.observation import (
    ProcessesNotReady,
    ProcessSetObservation,
    ProcessState,
    ReplicaObservation,
)
from setpoint.drivers.process.spec import MAX_REPLICAS

__all__ = [
    "BACKOFF_RESET_SECONDS",
    "KILL_TIMEOUT",
    "MAX_LOG_BYTES",
    "MAX_REPLICAS",
    "ProcessDriver",
    "ProcessSetObservation",
    "ProcessState",
    "ProcessesNotReady",
    "ReplicaObservation",
]
