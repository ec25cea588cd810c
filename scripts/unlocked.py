"""The distributions installed in this environment that no lock file pins at their version (scripts/setup.sh
runs it with --remove after an install, so a package a lock no longer names does not linger in .venv).

usage: python scripts/unlocked.py LOCK [LOCK ...] [--remove]
Prints one line per distribution that is not pinned (name, installed version, the lock's pin if any) and exits 1
when there is one; --remove uninstalls those a lock does not name at all. pip, setuptools, wheel and pcam-core
itself (the editable install) are left alone.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

EXEMPT = {"pip", "setuptools", "wheel", "pcam-core"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(paths: list[Path]) -> dict[str, str]:
    """{canonical name: version} for every pin of the locks whose marker holds in this environment."""
    pins: dict[str, str] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith(("#", "-")):
                continue
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                (spec,) = req.specifier
                pins[canonical(req.name)] = spec.version
    return pins


def unlocked(paths: list[Path]) -> list[tuple[str, str, str | None]]:
    """(name, installed version, the lock's version or None) for each installed distribution not pinned."""
    pins = lock_pins(paths)
    found = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return sorted((name, version, pins.get(name)) for name, version in found.items()
                  if name not in EXEMPT and pins.get(name) != version)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", nargs="+", type=Path)
    parser.add_argument("--remove", action="store_true", help="uninstall the distributions no lock names")
    args = parser.parse_args()
    strays = unlocked(args.locks)
    for name, version, pinned in strays:
        print(f"{name}=={version} is installed but {f'the lock pins {pinned}' if pinned else 'no lock names it'}")
    gone = [name for name, _, pinned in strays if pinned is None]
    if args.remove and gone:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *gone], check=True)
        strays = [s for s in strays if s[2] is not None]
    return 1 if strays else 0


if __name__ == "__main__":
    sys.exit(main())
