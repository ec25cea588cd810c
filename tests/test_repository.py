"""What a user's clone needs: the tests read nothing outside the repository and leave the checkout clean, and the
lock files pin the whole environment that scripts/setup.sh installs."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from helpers import REAL_H5, REAL_KAGGLE, REPO


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def test_real_fixtures_are_inside_the_repository_and_tracked():
    for folder in (REAL_KAGGLE, REAL_H5):
        assert folder.resolve().is_relative_to(REPO)
        tracked = _git("ls-files", str(folder.relative_to(REPO))).stdout.split()
        assert len(tracked) >= 7, f"{folder} is not committed"


def test_no_test_or_runtime_module_reads_beside_the_checkout():
    """A clone has no ../shared: neither the tests nor the runtime code may name it."""
    offenders = []
    for folder in ("tests", "pcam_core", "pcam_app", "pages"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "\"shared\"" in text or "../shared" in text:
                offenders.append(str(path.relative_to(REPO)))
    offenders.remove("tests/test_repository.py")
    assert offenders == []


def test_test_outputs_land_in_ignored_folders():
    """The browser test's screenshots (and other artefacts) go under tests/artifacts/, which git ignores, so
    `./test.sh` leaves a checkout as it found it."""
    from e2e.test_browser import SHOTS

    assert SHOTS.resolve().is_relative_to(REPO / "tests" / "artifacts")
    assert _git("check-ignore", "-q", str(SHOTS.relative_to(REPO) / "overview.png")).returncode == 0


# The lock files (scripts/lock.sh writes them; scripts/setup.sh installs only from them).
LOCK, TEST_LOCK = REPO / "requirements.lock", REPO / "requirements-test.lock"
NOT_LOCKED = {"pip", "setuptools", "wheel", "pcam-core"}  # pip's own tools, and this checkout (installed editable)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[tuple[str, str], str]:
    """{(name, marker): version} for every line of a requirements file that pins with ==."""
    from packaging.requirements import Requirement

    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} is not pinned with =="
            pins[(_canonical(req.name), str(req.marker or ""))] = spec.version
    return pins


def _here(pins: dict[tuple[str, str], str]) -> dict[str, str]:
    """The pins whose marker holds in this environment: {name: version}."""
    from packaging.markers import Marker

    return {name: version for (name, marker), version in pins.items() if not marker or Marker(marker).evaluate()}


def test_the_locks_pin_every_direct_requirement_at_its_version_and_agree():
    """requirements.txt and requirements-test.txt name the direct pins; the test lock holds them all at those
    versions, and the dashboard's lock is the test lock less the tests' packages: ./test.sh's set-up after
    ./dashboard.sh's only adds packages."""
    test_lock, lock = _pins(TEST_LOCK), _pins(LOCK)
    for path, target in ((REPO / "requirements.txt", lock), (REPO / "requirements.txt", test_lock),
                         (REPO / "requirements-test.txt", test_lock)):
        for (name, _), version in _pins(path).items():
            assert version in {v for (n, _), v in target.items() if n == name}, \
                f"{path.name} pins {name}=={version}; the lock does not (run scripts/lock.sh)"
    assert {key: version for key, version in lock.items() if test_lock.get(key) != version} == {}


def test_every_installed_distribution_is_pinned_by_the_lock():
    """After scripts/setup.sh every distribution in the environment is the one a lock pins: nothing floats."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"runs in the checkout's own .venv (scripts/setup.sh), not {sys.prefix}")
    pins = _here(_pins(TEST_LOCK))
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    assert {name: (version, pins.get(name)) for name, version in installed.items()
            if name not in NOT_LOCKED and pins.get(name) != version} == {}
