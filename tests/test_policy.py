"""The batching contract, checked on a simulated clock."""

from batching.policy import BatchPolicy, Decision


def policy(**kw) -> BatchPolicy:
    return BatchPolicy(max_batch_size=kw.pop("max_batch_size", 8), max_queue_delay_s=0.010, **kw)


def test_a_lone_request_on_an_idle_server_runs_at_once() -> None:
    p = policy()
    state = p.open(now=0.0, pulled_entries=1, pulled_rows=1)
    assert p.decide(state, now=0.0) == (Decision.RUN, 0.0)


def test_a_backlog_waits_for_more_within_the_delay() -> None:
    p = policy()
    state = p.open(now=0.0, pulled_entries=3, pulled_rows=3)
    decision, wait = p.decide(state, now=0.001)
    assert decision is Decision.WAIT and 0 < wait <= p.poll_interval_s


def test_the_delay_is_bounded_by_the_first_pull_on_our_own_clock() -> None:
    p = policy()
    state = p.open(now=10.0, pulled_entries=2, pulled_rows=2)
    p.add(state, pulled_entries=1, pulled_rows=1)
    assert p.decide(state, now=10.0099)[0] is Decision.WAIT
    assert p.decide(state, now=10.0101) == (Decision.RUN, 0.0)


def test_a_full_batch_runs_at_once() -> None:
    p = policy(max_batch_size=4)
    state = p.open(now=0.0, pulled_entries=2, pulled_rows=2)
    p.add(state, pulled_entries=2, pulled_rows=2)
    assert p.decide(state, now=0.0)[0] is Decision.RUN


def test_dry_arrivals_stop_the_wait_once_the_batch_has_grown() -> None:
    p = policy()
    p.ran(rows=3)
    state = p.open(now=0.0, pulled_entries=2, pulled_rows=2)
    p.add(state, pulled_entries=0, pulled_rows=0)
    assert p.decide(state, now=0.001)[0] is Decision.WAIT  # not yet past the last batch
    p.add(state, pulled_entries=2, pulled_rows=2)
    p.add(state, pulled_entries=0, pulled_rows=0)
    assert p.decide(state, now=0.002)[0] is Decision.RUN


def test_zero_delay_never_waits() -> None:
    p = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.0)
    state = p.open(now=0.0, pulled_entries=5, pulled_rows=5)
    assert p.decide(state, now=0.0)[0] is Decision.RUN


def test_a_preferred_size_runs_at_once() -> None:
    p = BatchPolicy(max_batch_size=16, max_queue_delay_s=0.010, preferred_sizes=(4, 8))
    state = p.open(now=0.0, pulled_entries=3, pulled_rows=3)
    assert p.decide(state, now=0.0)[0] is Decision.WAIT
    p.add(state, pulled_entries=1, pulled_rows=1)
    assert p.decide(state, now=0.0)[0] is Decision.RUN


def test_a_fill_target_stops_the_wait_early_but_caps_nothing() -> None:
    p = BatchPolicy(max_batch_size=64, max_queue_delay_s=0.010, fill_target=4)
    state = p.open(now=0.0, pulled_entries=3, pulled_rows=3)
    assert p.decide(state, now=0.0)[0] is Decision.WAIT
    p.add(state, pulled_entries=9, pulled_rows=9)  # more than the target: run all twelve
    assert p.decide(state, now=0.0)[0] is Decision.RUN and state.rows == 12


def test_strict_priority_then_fifo_and_deadlines_and_final_states() -> None:
    from dataclasses import dataclass

    from batching.policy import by_priority, expired, runnable

    @dataclass
    class E:
        priority: int
        ms: int
        seq: int
        deadline_ms: int = 0

        @property
        def order(self) -> tuple[int, int]:
            return self.ms, self.seq

    queue = [E(2, 10, 0), E(1, 30, 0), E(2, 5, 1), E(1, 20, 0), E(2, 5, 0)]
    assert [(e.priority, e.ms, e.seq) for e in by_priority(queue)] == [
        (1, 20, 0), (1, 30, 0), (2, 5, 0), (2, 5, 1), (2, 10, 0)
    ]  # fmt: skip
    clock_ms = 1_000.0  # a simulated clock
    assert not expired(E(1, 0, 0, deadline_ms=1_001), clock_ms)
    assert expired(E(1, 0, 0, deadline_ms=999), clock_ms)
    assert not expired(E(1, 0, 0, deadline_ms=0), clock_ms)  # no deadline
    assert runnable("queued") and runnable("running")
    assert not any(runnable(s) for s in ("cancelled", "expired", "done", "failed", None))
