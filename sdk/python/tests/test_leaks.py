"""The session's leak check can fail: real process groups it must catch (and kill), real ones
it must let go, and a whole pytest session against the real gateway that leaks a job and an
endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import leaks
import pytest
from conftest import _binary

HERE = Path(__file__).resolve().parent


def spawn(code: str) -> subprocess.Popen[str]:
    """A Python process leading a new session (and group), as the gateway does under pytest."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def state_of(pid: int) -> str:
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(") ", 1)[1][0]


def pids_in(line: str) -> set[int]:
    """The pids of one report line: ``...: pids 12 (mlgw supervise ...), 15 (python ...)``."""
    return {int(p) for p in re.findall(r"(?:^|, )(\d+) \(", line.split(": pids ", 1)[1])}


@pytest.fixture()
def reaped() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed and reaped however the test ends."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def started_job(pid: int, test: str = "test_x.py::test_leaky") -> leaks.Started:
    return leaks.Started("job", "j-1", "leaky", "running", f"pid {pid}", test)


def test_the_group_comes_from_the_backend_ref() -> None:
    assert leaks.group_of("pid 42") == 42
    assert leaks.group_of("mlserver pid 7 port 8080") == 7
    assert leaks.group_of("") is None
    assert leaks.group_of("team-a/mlgw-abc") is None
    assert leaks.group_of("arn:aws:sagemaker:eu-west-1:1:training-job/rapid") is None


def test_a_living_group_is_caught_named_and_killed(
    reaped: list[subprocess.Popen[str]],
) -> None:
    # A leader with a child in its group, as `mlgw supervise` and its program are.
    leader = spawn(
        "import subprocess, sys, time\n"
        "c = subprocess.Popen(['sleep', '600'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    reaped.append(leader)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    found = leaks.alive([leader.pid], leader.pid)
    assert sorted(p.pid for p in found[leader.pid]) == sorted([leader.pid, child])

    reports: list[str] = []
    leaks.check([started_job(leader.pid)], leader.pid, grace=0.5, on_leak=reports.append)
    assert len(reports) == 1, reports
    text = reports[0]
    assert "job j-1 'leaky'" in text and "created in test_x.py::test_leaky" in text
    assert pids_in(text) == {leader.pid, child}
    assert "sleep 600" in text
    # Killed, not left to the machine.
    assert leader.wait(timeout=10) == -9
    assert leaks.alive([leader.pid], leader.pid) == {}


def test_a_process_that_left_every_known_group_is_still_caught(
    reaped: list[subprocess.Popen[str]],
) -> None:
    # A grandchild that moved to a group of its own stays in the session.
    leader = spawn(
        "import subprocess, time\n"
        "c = subprocess.Popen(['sleep', '600'], process_group=0)\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    reaped.append(leader)
    assert leader.stdout is not None
    stray = int(leader.stdout.readline())
    reports: list[str] = []
    leaks.check(
        [],
        leader.pid,
        grace=0.2,
        group_test={stray: "test_y.py::test_stray"},
        on_leak=reports.append,
    )
    assert len(reports) == 1, reports
    assert (
        f"process group {stray}, named by no job or endpoint, first seen after "
        "test_y.py::test_stray: pids " + str(stray) + " (sleep 600)"
    ) in reports[0]
    assert leaks.wait_gone([stray], leader.pid, timeout=10) == {}


def test_a_group_of_another_session_is_not_ours(reaped: list[subprocess.Popen[str]]) -> None:
    # The gateway's session, everything in it ended (its leader a zombie)...
    gateway = spawn("pass")
    reaped.append(gateway)
    # Not reaped, so its pid stays its own; waited for, since Python takes a while to start
    # and end on a busy machine, and until then its session is not empty.
    deadline = time.monotonic() + 30
    while state_of(gateway.pid) != "Z":
        assert time.monotonic() < deadline, "python -c pass did not end within 30 s"
        time.sleep(0.02)
    # ...and a pid one of its jobs once had, reused by someone else's process leading a group.
    other = spawn("import time; time.sleep(600)")
    reaped.append(other)
    assert other.pid in leaks.alive([other.pid])
    assert leaks.alive([other.pid], gateway.pid) == {}
    reports: list[str] = []
    leaks.check([started_job(other.pid)], gateway.pid, grace=0.1, on_leak=reports.append)
    assert reports == []
    assert other.poll() is None  # and not killed


def test_the_check_never_sweeps_its_own_session() -> None:
    with pytest.raises(ValueError, match="own session"):
        leaks.check([], os.getsid(0), on_leak=print)


def test_zombies_count_as_gone(reaped: list[subprocess.Popen[str]]) -> None:
    ended = spawn("pass")
    reaped.append(ended)  # reaped only at the end: a zombie until then
    deadline = time.monotonic() + 10
    while state_of(ended.pid) != "Z":
        assert time.monotonic() < deadline, "the process never ended"
        time.sleep(0.05)
    reports: list[str] = []
    leaks.check([started_job(ended.pid)], ended.pid, grace=0.1, on_leak=reports.append)
    assert reports == []


def test_a_process_that_ends_within_the_grace_is_no_leak(
    reaped: list[subprocess.Popen[str]],
) -> None:
    ending = spawn("import time; time.sleep(0.5)")
    reaped.append(ending)
    assert ending.pid in leaks.alive([ending.pid], ending.pid)
    reports: list[str] = []
    leaks.check([started_job(ending.pid)], ending.pid, grace=30, on_leak=reports.append)
    assert reports == []
    assert ending.wait(timeout=10) == 0  # it ended on its own


LEAKY_SESSION = """
import json, os, time
from pathlib import Path


def record(kind, job_or_endpoint):
    path = Path(os.environ["LEAKY_REFS"])
    refs = json.loads(path.read_text()) if path.exists() else {}
    refs[kind] = job_or_endpoint.backend_ref
    path.write_text(json.dumps(refs))


def test_clean(client, gateway):
    client.train([gateway.python, "-c", "pass"], name="clean").wait(timeout=60, progress=False)


def test_leaky_job(client, gateway):
    job = client.train([gateway.python, "-c", "import time; time.sleep(600)"], name="leaky")
    deadline = time.monotonic() + 60
    while job.refresh().state != "running":
        assert job.state == "pending" and time.monotonic() < deadline, job.state
        time.sleep(0.1)
    record("job", job)


def test_leaky_endpoint(client, trained):
    ep = client.deploy(trained.output_uri, model_format="sklearn", name="sdk-leaky")
    record("endpoint", ep.wait_ready(timeout=180))
"""


@pytest.mark.integration
def test_a_session_that_leaks_fails_naming_the_tests(python_exe: str, tmp_path: Path) -> None:
    """This suite's own conftest, in a pytest session of its own whose tests leave a job
    running and an endpoint deployed: the session must fail, name both and end them."""
    _binary()  # fails clearly without $MLGW_BIN
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("conftest.py", "leaks.py"):
        shutil.copy(HERE / name, suite / name)
    (suite / "test_leaky.py").write_text(LEAKY_SESSION)
    refs_file = tmp_path / "refs.json"
    env = {**os.environ, "LEAKY_REFS": str(refs_file), "MLGW_PYTHON": python_exe}
    env.pop("MLGW_KEEP_DATA", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    refs = json.loads(refs_file.read_text()) if refs_file.exists() else {}
    groups = {kind: leaks.group_of(ref) for kind, ref in refs.items()}
    try:
        assert set(groups) == {"job", "endpoint"} and None not in groups.values(), out
        assert "3 passed, 1 error" in out and run.returncode == 1, out
        assert "outlived the test session" in out, out
        job_line = next(ln for ln in out.splitlines() if f"'{refs['job']}'" in ln)
        assert "'leaky' (running" in job_line, job_line
        assert "created in test_leaky.py::test_leaky_job" in job_line, job_line
        assert groups["job"] in pids_in(job_line), job_line
        ep_line = next(ln for ln in out.splitlines() if f"'{refs['endpoint']}'" in ln)
        assert "'sdk-leaky' (ready" in ep_line, ep_line
        assert "created in test_leaky.py::test_leaky_endpoint" in ep_line, ep_line
        assert groups["endpoint"] in pids_in(ep_line) and "mlserver" in ep_line, ep_line
        assert "'clean'" not in out, out
        # Ended by the check, not left running on the machine.
        assert leaks.wait_gone(groups.values(), timeout=10) == {}
    finally:
        # Whatever the check under test failed to end, and the data it keeps on a leak.
        left = leaks.alive(g for g in groups.values() if g is not None)
        if left:
            leaks.kill(left)
        kept = re.search(r"gateway data and log: (\S+)", out)
        if kept:
            shutil.rmtree(kept.group(1), ignore_errors=True)
