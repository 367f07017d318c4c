"""Did anything the gateway started outlive the test session?

Local jobs (under ``mlgw supervise``) and model servers run in process groups of their own, led
by the pid their backend ref names (``pid N``, ``mlserver pid N port P``), and they outlive a
gateway restart by design: the gateway's own process group says nothing about them. So the
session asks the API what it started, and looks for living members of those groups once the
gateway has stopped. Every process the gateway starts also stays in the gateway's session
(setpgid, not setsid), which catches what no record names and keeps another user's process
that happens to reuse a pid out of it.

Linux only (``/proc``). Zombies count as gone: they have ended, only their exit status is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlgw

PROC = Path("/proc")

# "pid 123" (a job), "mlserver pid 123 port 8080" (an endpoint).
_PID_IN_REF = re.compile(r"\bpid (\d+)\b")


def group_of(backend_ref: str) -> int | None:
    """The process group a local backend ref names (its pid leads the group), else ``None``."""
    m = _PID_IN_REF.search(backend_ref)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Proc:
    pid: int
    group: int
    session: int
    state: str
    command: str

    def __str__(self) -> str:
        return f"{self.pid} ({self.command})"


def _read(pid: int) -> Proc | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:  # it ended while we looked
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, _ppid, pgrp, sid = stat[stat.rindex(")") + 2 :].split()[:4]
    try:
        argv = [
            a.decode(errors="replace")
            for a in (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
            if a
        ]
        # The program's own name, not its directory: the arguments are what tell leaks apart.
        command = " ".join([os.path.basename(argv[0]), *argv[1:]])[:160] if argv else ""
    except OSError:
        command = ""
    return Proc(pid, int(pgrp), int(sid), state, command or comm)


def processes() -> list[Proc]:
    """Every process on the machine that has not ended (zombies and dead ones left out)."""
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            p = _read(int(entry.name))
            if p is not None and p.state not in ("Z", "X", "x"):
                out.append(p)
    return out


def alive(groups: Iterable[int], session: int | None = None) -> dict[int, list[Proc]]:
    """Living processes by process group: the members of ``groups`` and, given ``session``,
    every process of that session too; with ``session``, only processes of that session count,
    so a group id reused by someone else's process is not mistaken for a leak."""
    wanted = set(groups)
    found: dict[int, list[Proc]] = {}
    for p in processes():
        if session is not None and p.session != session:
            continue
        if p.group in wanted or session is not None:
            found.setdefault(p.group, []).append(p)
    return found


def wait_gone(
    groups: Iterable[int], session: int | None = None, timeout: float = 10.0
) -> dict[int, list[Proc]]:
    """Polls, for at most ``timeout`` seconds, until no process of ``groups`` (and ``session``)
    is alive; returns what is still alive then (empty when all ended)."""
    groups = set(groups)
    deadline = time.monotonic() + timeout
    while True:
        left = alive(groups, session)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill(left: Mapping[int, list[Proc]], timeout: float = 10.0) -> dict[int, list[Proc]]:
    """SIGKILLs the given processes (and anything they forked into the same groups of the same
    session meanwhile); returns what is still alive after ``timeout`` seconds."""
    sessions = {p.session for procs in left.values() for p in procs}
    groups = set(left)
    deadline = time.monotonic() + timeout
    current = dict(left)
    while current:
        for procs in current.values():
            for p in procs:
                # Signalled by pid, never by group id: only processes seen in the right
                # session are ours.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
        current = {
            g: [p for p in procs if p.session in sessions]
            for g, procs in alive(groups).items()
            if any(p.session in sessions for p in procs)
        }
    return current


@dataclass(frozen=True)
class Started:
    """A job or endpoint the gateway started, and the test it first appeared after."""

    kind: str
    id: str
    name: str
    state: str
    backend_ref: str
    test: str

    def __str__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        made = f", created in {self.test}" if self.test else ""
        return f"{self.kind} {self.id}{name} ({self.state}, {self.backend_ref!r}{made})"


class Ledger:
    """What the gateway started, with the test each job, endpoint and process group first
    appeared after (the test that created it, or a fixture it used)."""

    def __init__(self, session: int | None = None) -> None:
        self.session = session
        self.test_of: dict[str, str] = {}  # job or endpoint id -> test
        self.group_test: dict[int, str] = {}  # process group -> test

    def note(self, client: mlgw.Client, test: str) -> list[Started]:
        """Lists every job and endpoint (deleted ones too); those not seen before, and every
        new process group of the gateway's session, are credited to ``test``."""
        started = []
        for kind, records in (
            ("job", client.jobs()),
            ("endpoint", client.endpoints(include_deleted=True)),
        ):
            for r in records:
                test_of = self.test_of.setdefault(r.id, test)
                started.append(Started(kind, r.id, r.name, r.state, r.backend_ref, test_of))
                g = group_of(r.backend_ref)
                if g is not None:
                    self.group_test.setdefault(g, test_of)
        if self.session is not None:
            for g in alive((), self.session):
                self.group_test.setdefault(g, test)
        return started


def report(
    left: Mapping[int, list[Proc]],
    started: Iterable[Started],
    group_test: Mapping[int, str] | None = None,
) -> str:
    """One line per group still alive, naming the job or endpoint whose backend ref leads it
    (else the test after which it was first seen) and its pids."""
    by_group: dict[int, list[Started]] = {}
    for s in started:
        g = group_of(s.backend_ref)
        if g is not None:
            by_group.setdefault(g, []).append(s)
    lines = []
    for g, procs in sorted(left.items()):
        pids = ", ".join(str(p) for p in sorted(procs, key=lambda p: p.pid))
        owners = by_group.get(g)
        if owners:
            who = "; ".join(str(s) for s in owners)
        else:
            test = (group_test or {}).get(g)
            seen = f", first seen after {test}" if test else ""
            who = f"process group {g}, named by no job or endpoint{seen}"
        lines.append(f"  {who}: pids {pids}")
    return "\n".join(lines)


def check(
    started: list[Started],
    session: int | None,
    *,
    grace: float = 10.0,
    group_test: Mapping[int, str] | None = None,
    on_leak: Callable[[str], object],
) -> None:
    """After the gateway stopped: waits up to ``grace`` seconds for the groups of ``started``
    (and the gateway's ``session``) to end, kills what is left, and calls ``on_leak`` with a
    report naming each leftover."""
    if session is not None and session == os.getsid(0):
        # Every process of the session would be swept, this one and its shell with it.
        raise ValueError(f"session {session} is this process's own session, not the gateway's")
    groups = {g for s in started if (g := group_of(s.backend_ref)) is not None}
    left = wait_gone(groups, session, grace)
    if not left:
        return
    text = report(left, started, group_test)
    survivors = kill(left)
    tail = ""
    if survivors:
        tail = "\n  and these survived SIGKILL:\n" + report(survivors, started, group_test)
    on_leak(
        "processes the gateway started outlived the test session (now killed); a test that "
        "deploys an endpoint must delete it and a job left running must be cancelled:\n"
        + text
        + tail
    )
