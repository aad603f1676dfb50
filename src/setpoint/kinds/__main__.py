"""``python -m setpoint.kinds [--check]``: write the CRD files from the classes, or say which differ."""

from __future__ import annotations

import sys
from pathlib import Path

from setpoint.kinds import crd_texts


def main(argv: list[str]) -> int:
    crds = Path(__file__).resolve().parent.parent / "crds"
    stale = []
    for file, text in crd_texts().items():
        path = crds / file
        if path.exists() and path.read_text() == text:
            continue
        stale.append(file)
        if "--check" not in argv:
            path.write_text(text)
    verb = "differ from their classes (run `make crds`)" if "--check" in argv else "written"
    print(f"{len(stale)} CRD files {verb}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
