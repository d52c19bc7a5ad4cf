"""Prometheus metrics of a Claimer (the ``bulkclaim[metrics]`` extra: ``prometheus-client``).

:class:`ClaimerCollector` reads a Claimer's live counts (:class:`~bulkclaim.telemetry.Telemetry`) when
it is scraped, the ``prometheus_client`` idiom for values that already exist elsewhere: nothing is
copied while the Claimer works. Register it in the host's registry; this module starts no server and
touches no registry by itself (:func:`serve` and :func:`write_textfile` are what the CLI uses)::

    registry.register(claimer.metrics_collector())   # or ClaimerCollector(claimer)

Metrics (no phone number, token or id is ever a label):

- ``bulkclaim_numbers_total{status}``: numbers whose outcome the runs (claim runs, acquisitions,
  releases) reported, by status (those of the runs going on and of every ended run: it only grows);
- ``bulkclaim_numbers_remaining``: numbers the runs going on still have to settle;
- ``bulkclaim_requests_total{api,outcome}``: requests sent, by API and outcome (``ok``, ``throttled``:
  a 429, ``error``: any other error, a timeout, no answer);
- ``bulkclaim_request_duration_seconds{api}``: latency of each request (its wait for a turn excluded);
- ``bulkclaim_rate_limit_per_second{api,budget}`` / ``bulkclaim_rate_ceiling_per_second{api,budget}``:
  the rate sent at now (lowered by 429s, see ratelimit.py) and the configured one; ``budget="shared"``:
  the budget every worker of a PostgreSQL journal shares, as this process's latest slot read it from
  the journal (every worker shows the same: take the max, not the sum), ``"process"``: this process's;
- ``bulkclaim_lease_takeovers_total``: numbers this process took over from a PostgreSQL journal's
  worker whose lease expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bulkclaim.model import Status
from bulkclaim.telemetry import LATENCY_BUCKETS, OUTCOMES, Telemetry

try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.metrics_core import Metric
except ImportError as exc:  # pragma: no cover - the test suite has the extra
    raise ImportError("bulkclaim's metrics need prometheus-client: pip install 'bulkclaim[metrics]'") from exc

if TYPE_CHECKING:
    from bulkclaim.claimer import Claimer

__all__ = ["METRIC_NAMES", "ClaimerCollector", "registry_of", "serve", "write_textfile"]

#: Every metric family this module exposes (as the exposition names them, before _total/_bucket...).
METRIC_NAMES = ("bulkclaim_numbers", "bulkclaim_numbers_remaining", "bulkclaim_requests",
                "bulkclaim_request_duration_seconds", "bulkclaim_rate_limit_per_second",
                "bulkclaim_rate_ceiling_per_second", "bulkclaim_lease_takeovers")


class ClaimerCollector:
    """A Prometheus collector of one Claimer's metrics (or of a :class:`Telemetry` several Claimers
    were given), read at scrape time. Safe to scrape from another thread while the Claimer works."""

    def __init__(self, source: Claimer | Telemetry) -> None:
        self.telemetry = source if isinstance(source, Telemetry) else source.telemetry

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets a registry refuse a second collector of the same names."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        telemetry = self.telemetry
        numbers, requests, rates = telemetry.numbers(), telemetry.requests(), telemetry.rates()
        (by_status, remaining, sent, latency, rate, ceiling, takeovers) = families = self._families()
        for status in dict.fromkeys([*(s.value for s in Status), *sorted(numbers)]):
            by_status.add_metric([status], numbers.get(status, 0))
        remaining.add_metric([], telemetry.remaining())
        apis = sorted({*rates, *(api for api, _ in requests)})
        for api in apis:
            for outcome in OUTCOMES:
                sent.add_metric([api, outcome], requests.get((api, outcome), 0))
        latencies = telemetry.latencies()
        for api in apis:
            if (seen := latencies.get(api)) is not None:
                bounds = [*(f"{bound:g}" for bound in LATENCY_BUCKETS), "+Inf"]
                latency.add_metric([api], list(zip(bounds, map(float, seen.cumulative), strict=True)),
                                   seen.total_seconds)
        for api, limit in sorted(rates.items()):
            budget = "shared" if limit.shared else "process"
            rate.add_metric([api, budget], limit.current)
            ceiling.add_metric([api, budget], limit.ceiling)
        takeovers.add_metric([], telemetry.lease_takeovers)
        return families

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily,
                             GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("bulkclaim_numbers", "Numbers whose outcome the runs reported, by status.",
                                labels=["status"]),
            GaugeMetricFamily("bulkclaim_numbers_remaining", "Numbers the runs going on still have to settle."),
            CounterMetricFamily("bulkclaim_requests", "Requests sent to Connect, by API and outcome "
                                "(ok, throttled: a 429, error: any other error or no answer).",
                                labels=["api", "outcome"]),
            HistogramMetricFamily("bulkclaim_request_duration_seconds",
                                  "Latency of each request to Connect (its wait for a turn excluded).",
                                  labels=["api"]),
            GaugeMetricFamily("bulkclaim_rate_limit_per_second",
                              "Requests per second sent at now (lowered by throttling); budget=shared: the rate "
                              "every worker of a PostgreSQL journal shares, else this process's.",
                              labels=["api", "budget"]),
            GaugeMetricFamily("bulkclaim_rate_ceiling_per_second", "The configured requests per second.",
                              labels=["api", "budget"]),
            CounterMetricFamily("bulkclaim_lease_takeovers",
                                "Numbers this process took over from a worker whose lease expired."),
        )


def registry_of(telemetry: Telemetry) -> CollectorRegistry:
    """A registry of its own holding only ``telemetry``'s collector (the process's global one is left alone)."""
    registry = CollectorRegistry()
    registry.register(ClaimerCollector(telemetry))
    return registry


@contextmanager
def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``registry`` at ``http://addr:port/metrics`` (port 0: any free one) from a daemon thread
    while the block runs; yields the URL. Raises OSError if the address cannot be bound."""
    server, thread = start_http_server(port, addr=addr, registry=registry)
    try:
        host = f"[{addr}]" if ":" in addr else addr
        yield f"http://{host}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_textfile(registry: CollectorRegistry, path: Path) -> None:
    """Write ``registry`` in the text format node_exporter's textfile collector reads, replacing
    ``path`` atomically (0644: node_exporter often runs as another user; it names no number)."""
    from bulkclaim.report import atomic_write

    exposition = generate_latest(registry).decode()
    with atomic_write(path, mode=0o644) as handle:
        handle.write(exposition)

