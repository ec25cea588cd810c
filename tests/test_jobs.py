"""pcam_core.runs.jobs: background `python -m pcam_core` processes with a record and a log."""

from __future__ import annotations

import json

import pytest

from helpers import wait_for
from pcam_core.runs.jobs import job_error, job_status, start_job


def _wait(folder, name, timeout=120.0):
    wait_for(lambda: not job_status(folder, name).active, timeout=timeout)
    return job_status(folder, name)


@pytest.mark.slow
def test_a_job_runs_to_the_end_and_keeps_its_exit_code(tmp_path):
    out = tmp_path / "demo"
    status = start_job(tmp_path / "jobs", "tiny-demo", ["demo-data", "--out", out, "--train", "8", "--valid", "8", "--test", "8"],
                       outputs=[out / "SYNTHETIC_DATA.txt"])
    assert status.active and status.command[1:4] == ["-m", "pcam_core", "demo-data"]
    status = _wait(tmp_path / "jobs", "tiny-demo")
    assert status.state == "finished" and status.returncode == 0 and status.finished_at >= status.started_at
    assert "wrote SYNTHETIC demo data" in status.log_tail


@pytest.mark.slow
def test_a_failing_job_says_why(tmp_path):
    start_job(tmp_path, "bad", ["demo-data", "--out", tmp_path / "x", "--train", "0"])
    status = _wait(tmp_path, "bad")
    assert status.state == "failed" and status.returncode == 2
    assert job_error(status) == "--train must be at least 1"


def test_a_job_that_ended_unwatched_is_judged_by_its_outputs(tmp_path):
    """The dashboard restarted while the job ran: no exit code was recorded, its pid is gone."""
    done = tmp_path / "result.csv"
    record = {"name": "old", "command": ["python"], "pid": 2**22 + 12345, "pid_start": "1", "started_at": 1.0,
              "outputs": [str(done)]}
    (tmp_path / "old.json").write_text(json.dumps(record))
    status = job_status(tmp_path, "old")
    assert status.state == "failed" and "not watching" in job_error(status)
    done.write_text("id,label\n")
    assert job_status(tmp_path, "old").state == "finished"


def test_job_names_are_plain_file_names(tmp_path):
    assert job_status(tmp_path, "never-started") is None
    with pytest.raises(ValueError, match="invalid run id"):
        start_job(tmp_path, "../escape", ["--version"])
