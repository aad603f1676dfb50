"""Sample a running server with py-spy and say where its time goes.

py-spy is not a dependency of setpoint: install it into the venv (``pip install py-spy``) to get a
profile; without it the bench skips this part.

Samples are taken with ``--gil``: only stacks of the thread holding the GIL. The server is one
process whose Python work, on every thread, shares one GIL, so GIL time is its CPU budget; per
thread, samples / (rate * seconds) is the share of wall time that thread held the GIL. (Without
``--gil``, threads blocked in a queue wait are not always recognised as idle.) Sampling pauses
the process briefly, which slows it, so the profile is taken in a pass of its own and its
creates/s is not the benchmark's figure. ``native=True`` adds C frames (msgspec, sqlite, the
garbage collector, write(2)) at a higher cost.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from bench.procs import venv_bin

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    return venv_bin("py-spy")


def start(py_spy: str, pid: int, seconds: float, rate: int, out: Path,
          native: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--format", "raw", "--output", str(out), "--threads", "--gil",
         *(["--native"] if native else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_key(frame: str) -> tuple[str, str]:
    """(function, file) of one frame; the line number is dropped."""
    m = FRAME.match(frame)
    if not m:
        return frame, ""
    return m.group("func"), m.group("file")


def _area(file: str, func: str) -> str:
    """A coarse bucket for a leaf frame: which package the CPU time was spent in."""
    if "setpoint/" in file:
        parts = file.split("setpoint/", 1)[1].split("/")
        return "setpoint." + ".".join(p.removesuffix(".py") for p in parts)
    for pkg in ("starlette", "uvicorn", "msgspec", "fastjsonschema", "prometheus_client", "httptools",
                "uvloop", "sqlite3", "asyncio", "anyio", "json", "copy", "logging", "threading",
                "typing", "enum", "re", "base64", "uuid", "datetime", "email", "urllib", "dataclasses",
                "concurrent", "queue", "selectors"):
        if file.startswith(pkg + "/") or file == pkg + ".py" or f"/{pkg}/" in file:
            return pkg
    if func.startswith("Runner.run") or file.startswith("asyncio/runners"):
        return "event loop (C: I/O, callbacks)"
    if func.startswith(("gc_collect", "collect_with_callback", "gc_collect_main")):
        return "C: garbage collector"
    if file.endswith((".so", ".so.6")) or ".so." in file or file.endswith((".c", ".h")):
        return f"C: {file}"
    return file.split("/")[0] if file else func


def analyze(raw: Path, rate: int, seconds: float, top: int = 25) -> dict[str, object]:
    threads: Counter[str] = Counter()
    self_main: Counter[str] = Counter()
    incl_main: Counter[str] = Counter()
    area_main: Counter[str] = Counter()
    self_other: Counter[str] = Counter()
    main_total = 0
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = frames[0]
        m = re.match(r"thread \((\w+)\): ?(.*)", thread)
        tname = (m.group(2) or m.group(1)) if m else thread
        frames = frames[1:]
        threads[tname] += count
        total += count
        if not frames:
            continue
        leaf_func, leaf_file = _frame_key(frames[-1])
        leaf = f"{leaf_func} ({leaf_file})"
        if tname != "MainThread":
            self_other[f"[{tname}] {leaf}"] += count
            continue
        main_total += count
        self_main[leaf] += count
        area_main[_area(leaf_file, leaf_func)] += count
        for key in {f"{f} ({p})" for f, p in map(_frame_key, frames)}:
            incl_main[key] += count
    possible = max(1.0, rate * seconds)

    def pct(c: int, of: int) -> float:
        return round(100.0 * c / of, 1) if of else 0.0

    return {
        "samples": total, "rate": rate, "seconds": seconds,
        "threads": [{"thread": t, "samples": c, "gil_pct_of_wall": pct(c, int(possible))}
                    for t, c in threads.most_common()],
        "main_self": [{"function": f, "pct": pct(c, main_total)} for f, c in self_main.most_common(top)],
        "main_inclusive": [{"function": f, "pct": pct(c, main_total)}
                           for f, c in incl_main.most_common(top * 3)
                           if "setpoint/" in f or "starlette/" in f or "uvicorn/" in f][:top],
        "main_areas": [{"area": a, "pct": pct(c, main_total)} for a, c in area_main.most_common(top)],
        "other_threads_self": [{"function": f, "pct_of_all": pct(c, total)}
                               for f, c in self_other.most_common(10)],
    }


def markdown(p: dict[str, object]) -> str:
    out = [f"### py-spy profile of setpoint under the create load ({p['samples']} samples, "
           f"{p['rate']} Hz, {p['seconds']} s, --gil{' --native' if p.get('native') else ''})", "",
           f"creates/s while sampled: {p.get('creates_per_s_while_sampled', 0):,.0f} "
           "(sampling slows the server; the benchmark figure comes from an unsampled pass)", "",
           "| thread | samples | GIL held (% of wall) |", "|---|---:|---:|"]
    for t in p["threads"]:  # type: ignore[attr-defined]
        out.append(f"| {t['thread']} | {t['samples']} | {t['gil_pct_of_wall']} |")
    out += ["", "Main thread, CPU by area (leaf frame):", "", "| area | % |", "|---|---:|"]
    for a in p["main_areas"][:15]:  # type: ignore[index]
        out.append(f"| {a['area']} | {a['pct']} |")
    out += ["", "Main thread, self time (leaf frame):", "", "| function | % |", "|---|---:|"]
    for f in p["main_self"][:25]:  # type: ignore[index]
        out.append(f"| `{f['function']}` | {f['pct']} |")
    out += ["", "Main thread, inclusive time (setpoint, starlette, uvicorn frames):", "",
            "| function | % |", "|---|---:|"]
    for f in p["main_inclusive"][:25]:  # type: ignore[index]
        out.append(f"| `{f['function']}` | {f['pct']} |")
    if p["other_threads_self"]:
        out += ["", "Other threads, self time:", "", "| function | % of all samples |", "|---|---:|"]
        for f in p["other_threads_self"]:  # type: ignore[attr-defined]
            out.append(f"| `{f['function']}` | {f['pct_of_all']} |")
    return "\n".join(out) + "\n"
