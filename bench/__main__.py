"""``python -m bench``: setpoint against etcd, raw SQLite and the Python ceiling, in one run.

See bench/README.md for what is measured and how. Results go to bench/results/latest.json and
bench/results/latest.md (and are printed).
"""
from __future__ import annotations

import atexit
import json
import signal
import sys
import tempfile
from pathlib import Path

from bench import procs, report
from bench.harness import Bench, parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    atexit.register(procs.stop_all)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-", dir=args.tmp_dir) as tmp:
        bench = Bench(args, Path(tmp))
        try:
            with bench.stack:
                bench.run()
        finally:
            procs.stop_all()
    results = bench.results
    md = report.markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "latest.md").write_text(md)
    print(json.dumps(results, indent=2, default=str))
    print()
    print(md)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
