"""SeriesFamily: Prometheus families kept as plain numbers expose what prometheus_client's own
metric classes expose for the same emissions (the `_created` samples aside)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tradewind_cluster.observability import PROMETHEUS_BUCKETS
from tradewind_cluster.observability.series import SeriesFamily, SeriesKind

LABELS = ("dag_id", "task_id")
keys = st.tuples(st.sampled_from(["etl", "a b", 'q"uote']), st.sampled_from(["t1", "t\\2", "ü"]))


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def registered(family: SeriesFamily) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(family)
    return registry


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            keys,
            st.floats(min_value=0, max_value=120, allow_nan=False)
            | st.sampled_from(
                PROMETHEUS_BUCKETS  # values on a bound go in that bound's bucket
            ),
        ),
        max_size=40,
    )
)
def test_a_histogram_exposes_what_prometheus_client_does(
    observations: list[tuple[tuple[str, str], float]],
) -> None:
    ours = SeriesFamily("h", "doc", LABELS, SeriesKind.HISTOGRAM, buckets=PROMETHEUS_BUCKETS)
    theirs_registry = CollectorRegistry()
    theirs = Histogram("h", "doc", LABELS, registry=theirs_registry, buckets=PROMETHEUS_BUCKETS)
    for key, value in observations:
        ours.observe(key, value)
        theirs.labels(*key).observe(value)
    assert exposition(registered(ours)) == exposition(theirs_registry)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(keys, st.floats(min_value=0, max_value=1e6)), max_size=30))
def test_a_counter_exposes_what_prometheus_client_does(
    increments: list[tuple[tuple[str, str], float]],
) -> None:
    ours = SeriesFamily("c", "doc", LABELS, SeriesKind.COUNTER)
    theirs_registry = CollectorRegistry()
    theirs = Counter("c", "doc", LABELS, registry=theirs_registry)
    for key, amount in increments:
        ours.add(key, amount)
        theirs.labels(*key).inc(amount)
    assert exposition(registered(ours)) == exposition(theirs_registry)


def test_a_gauge_is_set_and_moved_either_way() -> None:
    ours = SeriesFamily("g", "doc", ("pool",), SeriesKind.GAUGE)
    theirs_registry = CollectorRegistry()
    theirs = Gauge("g", "doc", ("pool",), registry=theirs_registry)
    ours.set(("p",), 5)
    theirs.labels("p").set(5)
    ours.add(("p",), -7)
    theirs.labels("p").inc(-7)
    ours.add(("q",), 2)
    theirs.labels("q").inc(2)
    assert exposition(registered(ours)) == exposition(theirs_registry)
    assert registered(ours).get_sample_value("g", {"pool": "p"}) == -2


def test_an_unlabelled_family_has_one_series_once_used() -> None:
    family = SeriesFamily("beats", "doc", (), SeriesKind.COUNTER)
    registry = registered(family)
    assert registry.get_sample_value("beats_total") is None  # nothing until first use
    family.add((), 1)
    family.add((), 2)
    assert registry.get_sample_value("beats_total") == 3


def test_a_counter_refuses_to_go_down() -> None:
    family = SeriesFamily("c", "doc", (), SeriesKind.COUNTER)
    with pytest.raises(ValueError, match="only go up"):
        family.add((), -1)


def test_histogram_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing order"):
        SeriesFamily("h", "doc", (), SeriesKind.HISTOGRAM, buckets=(1.0, 0.5))
    with pytest.raises(ValueError, match="increasing order"):
        SeriesFamily("h", "doc", (), SeriesKind.HISTOGRAM)


def test_a_name_taken_in_the_registry_is_refused() -> None:
    registry = CollectorRegistry()
    Counter("dup", "doc", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(SeriesFamily("dup", "doc", (), SeriesKind.COUNTER))


def test_concurrent_emissions_are_all_counted() -> None:
    family = SeriesFamily("h", "doc", ("k",), SeriesKind.HISTOGRAM, buckets=(1.0,))
    counter = SeriesFamily("c", "doc", ("k",), SeriesKind.COUNTER)
    threads, rounds = 8, 5000

    def emit(n: int) -> None:
        for i in range(rounds):
            family.observe((str(i % 3),), 0.5)
            counter.add((str(n % 2),), 1)

    workers = [threading.Thread(target=emit, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    registry = registered(family)
    registry.register(counter)
    total = sum(registry.get_sample_value("h_count", {"k": str(k)}) or 0 for k in range(3))
    assert total == threads * rounds
    assert sum(registry.get_sample_value("c_total", {"k": str(k)}) or 0 for k in range(2)) == (
        threads * rounds
    )
