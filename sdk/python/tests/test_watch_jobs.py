"""``Client.watch_jobs`` against the real gateway: every job's changes from the gateway's
feed, replayed from a sequence and resumed after one, filtered by state."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import pytest

import mlgw

pytestmark = pytest.mark.integration


def _collect(
    changes: Iterator[mlgw.JobChange], done: Callable[[list[mlgw.JobChange]], bool]
) -> list[mlgw.JobChange]:
    """Reads ``changes`` until ``done`` says so, failing (not hanging) after 60 s."""
    got: list[mlgw.JobChange] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for c in changes:
                got.append(c)
                if done(got):
                    return
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not errors, errors
    assert not t.is_alive(), f"watch_jobs did not deliver within 60 s; got {got}"
    return got


def test_watch_jobs_replays_resumes_and_filters(client: mlgw.Client) -> None:
    jobs = [client.train([sys.executable, "-c", "print(1)"], target="local") for _ in range(2)]
    for j in jobs:
        j.wait(timeout=120, progress=False)
        assert j.state == "succeeded", j.message
    ids = {j.id for j in jobs}

    def ours(cs: list[mlgw.JobChange]) -> list[mlgw.JobChange]:
        return [c for c in cs if c.job.id in ids]

    def both_done(cs: list[mlgw.JobChange]) -> bool:
        return sum(c.job.state == "succeeded" for c in ours(cs)) == len(ids)

    everything = ours(_collect(client.watch_jobs(after=0), both_done))
    seqs = [c.feed_sequence for c in everything]
    assert seqs == sorted(set(seqs)), seqs
    for j in jobs:
        states = [c.job.state for c in everything if c.job.id == j.id]
        assert states[0] == "pending" and states[-1] == "succeeded", states

    # Resumed after the first of them: exactly the rest.
    last = everything[-1].feed_sequence
    rest = ours(
        _collect(
            client.watch_jobs(after=everything[0].feed_sequence),
            lambda cs: bool(cs) and cs[-1].feed_sequence >= last,
        )
    )
    assert [(c.feed_sequence, c.job.id, c.job.state) for c in rest] == [
        (c.feed_sequence, c.job.id, c.job.state) for c in everything[1:]
    ]

    finished = ours(
        _collect(
            client.watch_jobs(states=["succeeded"], target="local", after=0),
            lambda cs: len(ours(cs)) == len(ids),
        )
    )
    assert {c.job.id for c in finished} == ids
    assert all(c.job.state == "succeeded" for c in finished)


def test_watch_jobs_refuses_an_unknown_state(client: mlgw.Client) -> None:
    with pytest.raises(ValueError, match="states"):
        next(client.watch_jobs(states=["done"]))
