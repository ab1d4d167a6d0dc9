"""The timer store on a local RocksDB: due timers come out earliest first, whatever was fired and set before."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.timers import TimerStore


def test_fired_timers_are_gone_and_an_earlier_new_timer_is_seen(tmp_path: Path) -> None:
    store = TimerStore(tmp_path)
    store.apply(0, [(f"t{i}", 1_000 + i, b"v%d" % i) for i in range(100)], 100)
    fired = store.due(0, 1_049, limit=500)
    assert [k for k, _ in fired] == [f"t{i}" for i in range(50)]
    store.forget(0, [k for k, _ in fired])
    assert store.next_due(0) == 1_050
    assert store.due(0, 1_049, limit=500) == []
    # set after the head moved on, due before it: found all the same
    store.apply(0, [("late", 10, b"x")], 101)
    assert store.next_due(0) == 10
    assert store.due(0, 1_051, limit=3) == [("late", b"x"), ("t50", b"v50"), ("t51", b"v51")]
    assert store.next_offset(0) == 101
    store.close()


def test_a_partition_that_ran_empty_sees_its_next_timer(tmp_path: Path) -> None:
    store = TimerStore(tmp_path)
    assert store.next_due(3) is None
    store.apply(3, [("a", 5_000, b"a")], 1)
    assert store.due(3, 4_999, limit=10) == []
    assert store.due(3, 5_000, limit=10) == [("a", b"a")]
    store.forget(3, ["a"])
    assert store.next_due(3) is None
    store.apply(3, [("b", 1, b"b")], 2)
    assert store.next_due(3) == 1
    assert store.next_due(2) is None  # partitions are apart
    store.close()


def test_timers_that_failed_to_fire_stay_due_and_the_floor_is_rebuilt_on_reopen(tmp_path: Path) -> None:
    store = TimerStore(tmp_path)
    store.apply(2, [("a", 100, b"a"), ("b", 200, b"b")], 2)
    assert store.due(2, 150, limit=10) == [("a", b"a")]
    assert store.due(2, 150, limit=10) == []  # handed out: its firing is on its way
    assert store.next_due(2) == 200
    store.release(2)  # the firing failed
    assert store.next_due(2) == 100
    assert store.due(2, 150, limit=10) == [("a", b"a")]
    store.apply(2, [("early", 50, b"e")], 3)  # due before one handed out: those are handed out again
    assert store.due(2, 150, limit=10) == [("early", b"e"), ("a", b"a")]
    store.close()
    reopened = TimerStore(tmp_path)
    assert reopened.next_due(2) == 50
    assert reopened.next_offset(2) == 3
    reopened.close()


def test_a_moved_timer_is_due_at_its_new_time_only(tmp_path: Path) -> None:
    store = TimerStore(tmp_path)
    store.apply(1, [("a", 100, b"1")], 1)
    store.apply(1, [("a", 300, b"2")], 2)
    assert store.due(1, 200, limit=10) == []
    assert store.due(1, 300, limit=10) == [("a", b"2")]
    store.apply(1, [("a", None, None)], 3)  # tombstone
    assert store.next_due(1) is None
    store.close()


def test_a_release_hands_out_again_all_but_what_is_still_in_flight(tmp_path: Path) -> None:
    store = TimerStore(tmp_path)
    store.apply(0, [("a", 10, b"a"), ("b", 20, b"b"), ("c", 30, b"c")], 3)
    assert store.due(0, 10, limit=10) == [("a", b"a")]  # one batch
    assert store.due(0, 30, limit=10) == [("b", b"b"), ("c", b"c")]  # another, while the first is in flight
    store.release(0)  # the second batch failed; "a" is still in flight
    assert store.due(0, 30, limit=10, skip={"a"}) == [("b", b"b"), ("c", b"c")]
    store.forget(0, ["a", "b", "c"])
    assert store.next_due(0) is None
    store.close()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 1), st.sampled_from("abcdefgh"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 1), st.sampled_from("abcdefgh"), st.just(0)),
        st.tuples(st.sampled_from(["fire", "send"]), st.integers(0, 1), st.just(""), st.integers(0, 50)),
        st.tuples(st.sampled_from(["land", "fail"]), st.integers(0, 1), st.just(""), st.integers(1, 4)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_the_store_agrees_with_a_plain_model(script: list[tuple[str, int, str, int]]) -> None:
    """Two partitions, used as the timer service uses them: what it sends is in flight (passed as ``skip``) until
    it lands (forgotten) or fails (released); "fire" sends and lands at once; "land" and "fail" settle the first
    few in flight. Whatever the order, a read hands out exactly the earliest due timers not in flight."""
    timers: list[dict[str, int]] = [{}, {}]
    flying: list[set[str]] = [set(), set()]
    with tempfile.TemporaryDirectory() as tmp:
        store = TimerStore(Path(tmp))
        for n, (op, p, key, at) in enumerate(script):
            if op == "set":
                store.apply(p, [(key, at, key.encode())], n)
                timers[p][key] = at
            elif op == "cancel":
                store.apply(p, [(key, None, None)], n)
                timers[p].pop(key, None)
            elif op in ("land", "fail"):
                settled = sorted(flying[p])[:at]
                flying[p].difference_update(settled)
                if op == "land":
                    store.forget(p, settled)
                    for k in settled:
                        timers[p].pop(k, None)
                else:
                    store.release(p)
            else:
                expected = sorted((due, k) for k, due in timers[p].items() if due <= at and k not in flying[p])[:3]
                fired = store.due(p, at, limit=3, skip=set(flying[p]))
                assert fired == [(k, k.encode()) for _, k in expected]
                if op == "fire":
                    store.forget(p, [k for k, _ in fired])
                    for k, _ in fired:
                        del timers[p][k]
                else:
                    flying[p].update(k for k, _ in fired)
            for q in (0, 1):
                waiting = [due for k, due in timers[q].items() if k not in flying[q]]
                earliest = min(waiting) if waiting else None
                seen = store.next_due(q, skip=set(flying[q]))
                if not flying[q]:
                    assert seen == earliest
                elif earliest is not None:
                    assert seen is not None
                    assert seen <= earliest  # earlier only for one in flight: never late
                elif seen is not None:
                    assert any(timers[q].get(k) == seen for k in flying[q])
        store.close()
