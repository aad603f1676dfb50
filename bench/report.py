"""Ratios, targets and the Markdown table of a bench run."""

from __future__ import annotations

from typing import Any

from bench import agent

# From /work/shared/ARCHITECTURE.md, "Reference figures on this machine kind".
REFERENCE = {
    "trivial": "15k req/s",
    "sqlite_1": "5.9k rows/s",
    "sqlite_32": "93k rows/s",
    "ceiling": "9.1k req/s",
    "etcd_puts": "~9.7k puts/s",
    "etcd_watch": "p99 3.3 ms",
}


def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def ratios(r: dict[str, Any]) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    creates = _get(r, "setpoint", "creates", "rps")
    by_workers = _get(r, "setpoint", "creates_workers") or {}
    puts = _get(r, "etcd", "puts", "rps")
    ceiling = _get(r, "ceiling", "insert", "rps")
    sp99 = _get(r, "setpoint", "latency", "p99_ms")
    et99 = _get(r, "etcd", "latency", "p99_ms")

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out = {
        "creates_over_etcd_puts": div(creates, puts),
        "creates_over_ceiling": div(creates, ceiling),
        "watch_p99_over_etcd": div(sp99, et99),
    }
    for n, d in sorted(by_workers.items(), key=lambda kv: int(kv[0])):
        out[f"workers_{n}_creates_over_etcd_puts"] = div(d.get("rps"), puts)
        out[f"workers_{n}_creates_over_ceiling"] = div(d.get("rps"), ceiling)
    targets = [
        {"target": "setpoint creates/s ÷ etcd puts/s", "value": out["creates_over_etcd_puts"],
         "goal": "≥ 1.0", "met": None if out["creates_over_etcd_puts"] is None
         else out["creates_over_etcd_puts"] >= 1.0},
        {"target": "setpoint creates/s ÷ Python ceiling", "value": out["creates_over_ceiling"],
         "goal": "≥ 0.5", "met": None if out["creates_over_ceiling"] is None
         else out["creates_over_ceiling"] >= 0.5},
        {"target": "setpoint watch p99 (ms)", "value": sp99, "goal": "≤ 10",
         "met": None if sp99 is None else sp99 <= 10.0},
        {"target": "setpoint watch p99 ÷ etcd watch p99", "value": out["watch_p99_over_etcd"],
         "goal": "≤ 1.0", "met": None if out["watch_p99_over_etcd"] is None
         else out["watch_p99_over_etcd"] <= 1.0},
    ]
    for n in sorted(by_workers, key=int):
        over_etcd, over_ceiling = out[f"workers_{n}_creates_over_etcd_puts"], out[f"workers_{n}_creates_over_ceiling"]
        targets += [
            {"target": f"setpoint --workers {n} creates/s ÷ etcd puts/s", "value": over_etcd,
             "goal": "≥ 1.2", "met": None if over_etcd is None else over_etcd >= 1.2},
            {"target": f"setpoint --workers {n} creates/s ÷ Python ceiling", "value": over_ceiling,
             "goal": "≥ 0.8", "met": None if over_ceiling is None else over_ceiling >= 0.8},
        ]
    return out, targets


def _n(x: Any, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}{unit}"
    return f"{x:,.0f}{unit}"


def _cpu(d: dict[str, Any] | None) -> str:
    c = _get(d or {}, "cpu")
    if not c:
        return ""
    return f"server {c['server_cores']:.2f} · bench {c['bench_cores']:.2f} · other {c['other_cores']:.2f}"


def _tp_note(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    parts = [f"{d['generator']}, {d['connections']} conns, {d['seconds']:.0f} s"]
    if d.get("rounds_rps") and len(d["rounds_rps"]) > 1:
        rounds = d["rounds_rps"]
        parts.append(f"median of rounds {' / '.join(f'{x:,.0f}' for x in rounds)} "
                     f"(min {min(rounds):,.0f}, max {max(rounds):,.0f})")
    lat = d.get("latency_ms") or {}
    if lat:
        parts.append(f"req p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms")
    if d.get("errors"):
        parts.append(f"errors {d['errors']}")
    return "; ".join(parts)


def _lat(d: dict[str, Any] | None) -> tuple[str, str]:
    if not d:
        return "—", ""
    fig = f"p50 {d['p50_ms']:.2f} ms · p99 {d['p99_ms']:.2f} ms"
    note = (f"{d['rate_achieved']:,.0f} writes/s achieved of {d['rate_target']:,.0f}, "
            f"{d['watchers']} watchers, max {d['max_ms']:.1f} ms, "
            f"missing {d['events_missing']}/{d['events_expected']}, "
            f"write p50/p99 {d['write_p50_ms']}/{d['write_p99_ms']} ms")
    if d.get("write_errors"):
        note += f", write errors {d['write_errors']} (first: {d['first_error'][:120]})"
    return fig, note


def markdown(r: dict[str, Any]) -> str:
    meta = r.get("meta", {})
    rows: list[tuple[str, str, str, str, str]] = []
    lc = r.get("loadgen_check") or {}
    g = lc.get("generator")
    rows.append(("load generator → trivial endpoint (no store)", _n(_get(g or {}, "rps"), " req/s"),
                 REFERENCE["trivial"], _tp_note(g), _cpu(g)))
    py = lc.get("python_raw")
    if py:
        rows.append(("python raw client (2 procs) → trivial endpoint", _n(py["rps"], " req/s"), "",
                     _tp_note(py), _cpu(py)))
    for s in r.get("sqlite_raw") or []:
        rows.append((f"raw SQLite WAL sync=FULL, {s['rows_per_commit']} row(s)/commit",
                     _n(s["rows_per_s"], " rows/s"),
                     REFERENCE["sqlite_1" if s["rows_per_commit"] == 1 else "sqlite_32"],
                     f"{s['commits_per_s']:,.0f} commits/s", ""))
    ci = _get(r, "ceiling", "insert")
    rows.append(("Python ceiling: bare app + group-committed insert", _n(_get(ci or {}, "rps"), " req/s"),
                 REFERENCE["ceiling"], _tp_note(ci), _cpu(ci)))
    ep = _get(r, "etcd", "puts")
    ver = _get(r, "etcd", "version") or ""
    rows.append((f"etcd {ver} puts (v3 JSON gateway)", _n(_get(ep or {}, "rps"), " puts/s"),
                 REFERENCE["etcd_puts"], _tp_note(ep), _cpu(ep)))
    sc = _get(r, "setpoint", "creates")
    rows.append(("**setpoint creates** (CRD with schema, ~500 B)", _n(_get(sc or {}, "rps"), " creates/s"),
                 "", _tp_note(sc), _cpu(sc)))
    for n, sw in sorted((_get(r, "setpoint", "creates_workers") or {}).items(), key=lambda kv: int(kv[0])):
        rows.append((f"**setpoint creates**, `serve --workers {n}`", _n(sw.get("rps"), " creates/s"),
                     "", _tp_note(sw), _cpu(sw)))
    el = _get(r, "etcd", "latency")
    fig, note = _lat(el)
    rows.append(("etcd put-ack → watch event", fig, REFERENCE["etcd_watch"], note, _cpu(el)))
    sl = _get(r, "setpoint", "latency")
    fig, note = _lat(sl)
    rows.append(("**setpoint create-ack → watch event**", fig, "", note, _cpu(sl)))
    lst = _get(r, "setpoint", "list") or {}
    for key, label in (("watch_cache", "resourceVersion=0, watch cache"),
                       ("store", "no resourceVersion, store")):
        d = lst.get(key)
        if d:
            rows.append((f"setpoint list {lst['objects']:,} objects ({label})",
                         f"{d['seconds']:.3f} s · {d['bytes'] / 1e6:.2f} MB", "",
                         f"median of 3: {', '.join(f'{x:.3f}' for x in d['seconds_all'])} s; "
                         f"{d['items']:,} items", ""))
    rows += agent.rows(r)
    launch = ("bench/setpoint_uvloop.py (loop forced to uvloop)"
              if _get(meta, "settings", "setpoint_uvloop") else "`setpoint serve` as shipped (its default, one "
              "process; the `--workers N` rows: N API processes beside the store's)")
    out = [
        f"## setpoint bench — {meta.get('when', '')} on {meta.get('cpus')} CPUs, "
        f"load generator {meta.get('generator', '?')}",
        "",
        f"Load average at start: {', '.join(f'{x:.2f}' for x in meta.get('loadavg_at_start', []))}. "
        "CPU columns are average cores used during the measurement "
        "(server under test · this bench incl. wrk · everything else on the machine).",
        f"setpoint was started with {launch}; source {_get(meta, 'source', 'commit')}"
        f" (+{_get(meta, 'source', 'src_uncommitted_files')} uncommitted files in src/).",
        "",
        "| measurement | result | reference (ARCHITECTURE.md) | details | CPU (cores) |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    out += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in r.get("targets") or []:
        v = t["value"]
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        out.append(f"| {t['target']} | {'—' if v is None else v} | {t['goal']} | {met} |")
    if _get(r, "setpoint", "gc"):
        out += ["", f"setpoint garbage collections over the run (cumulative): `{r['setpoint']['gc']}`"]
    prof = r.get("profile")
    if prof:
        out += ["", f"py-spy profile: {prof.get('samples')} samples while setpoint served "
                f"{prof.get('creates_per_s_while_sampled', 0):,.0f} creates/s; see "
                f"{prof.get('markdown')}. Top of the main thread by area: "
                + ", ".join(f"{a['area']} {a['pct']}%" for a in prof["main_areas"][:6]) + "."]
    if r.get("errors"):
        out += ["", "Errors:", ""]
        for k, v in r["errors"].items():
            out.append(f"- {k}: {str(v).splitlines()[0][:300]}")
    return "\n".join(out) + "\n"
