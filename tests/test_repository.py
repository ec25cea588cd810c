"""What a user's clone needs: the tests read nothing outside the repository and leave the checkout clean."""

from __future__ import annotations

import subprocess

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
