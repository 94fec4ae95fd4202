"""The server's Prometheus metrics, served at GET /metrics in the text format (prometheus-client), from a registry
of each app's own (prometheus_client's global REGISTRY would mix two apps of one process).

Counted as things happen: HTTP requests by endpoint (the route's path) and status (the Count middleware), errors
by OpenAI type and code (errors.py's handlers), prompt, cached and generated tokens and finish reasons of every
generation (API requests and UI turns, from their usage), time to first token and between tokens (Service, as its
worker hands each streamed piece on). Read at scrape time (Gauges): running and queued requests, the batching
runner's sequences, steps, rows and batch size per step, KV cache bytes, budget and evictions. README.md lists the
names."""
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from engine.runtime.generate import GenerationStats

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

router = APIRouter()


class Metrics:
    """One app's metrics. service: what the gauges read at scrape time (engine.server.service.Service)."""

    def __init__(self, service):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("engine_http_requests", "HTTP requests answered, by endpoint (route path; 'other' "
                                "for no route) and status code", ["endpoint", "status"], registry=r)
        self.errors = Counter("engine_errors", "Errors answered (error responses, stream error events, failed UI "
                              "turns), by OpenAI error type and code", ["type", "code"], registry=r)
        self.prompt_tokens = Counter("engine_prompt_tokens", "Prompt tokens of generations", registry=r)
        self.cached_tokens = Counter("engine_prompt_tokens_cached", "Prompt tokens found in a cached prefix (prefix "
                                     "cache hits), not computed again", registry=r)
        self.generated_tokens = Counter("engine_generation_tokens", "Tokens generated", registry=r)
        self.finished = Counter("engine_generations", "Generations ended, by finish reason", ["finish_reason"],
                                registry=r)
        self.ttft = Histogram("engine_time_to_first_token_seconds", "From a request's admission (queueing "
                              "included) to its first streamed piece", buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("engine_inter_token_latency_seconds", "Between a generation's streamed pieces (a piece "
                             "is a token's text, or several tokens' when text is held back)", buckets=ITL_BUCKETS,
                             registry=r)
        r.register(_ServiceCollector(service))

    def usage(self, stats: GenerationStats | None) -> None:
        """Count a finished generation's usage (prompt, cached and generated tokens, finish reason)."""
        if stats is None:
            return
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.cached_tokens.inc(stats.cached_tokens)
        self.generated_tokens.inc(stats.completion_tokens)
        self.finished.labels(stats.finish_reason or "none").inc()

    def error(self, type_: str, code: str | None) -> None:
        self.errors.labels(type_, code or "").inc()

    def clock(self, start: float) -> "PieceClock":
        """A PieceClock of a generation admitted at start (time.perf_counter())."""
        return PieceClock(self, start)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class PieceClock:
    """Times one generation's streamed pieces: the first since its start (TTFT), then each since the one before."""

    def __init__(self, metrics: Metrics, start: float):
        self.metrics, self.last, self.first = metrics, start, True

    def tick(self) -> None:
        now = time.perf_counter()
        (self.metrics.ttft if self.first else self.metrics.itl).observe(now - self.last)
        self.last, self.first = now, False


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, counts: dict[int, int], bounds) -> HistogramMetricFamily:
    """A histogram of integer observations given as {value: times seen}."""
    buckets = [(str(float(b)), sum(n for v, n in counts.items() if v <= b)) for b in bounds]
    buckets.append(("+Inf", sum(counts.values())))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum(v * n for v, n in counts.items()))


class _ServiceCollector:
    """The gauges and counters that the Service and its BatchingRunner keep, read at scrape time."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        s, runner = self.service, self.service.scheduler
        yield _gauge("engine_requests_running", "Requests running on a worker (at most --max-batch)", s.active)
        yield _gauge("engine_requests_waiting", "Requests queued for a place (at most --max-queue)", s.queued)
        yield _gauge("engine_batch_sequences", "Sequences in the batching runner's batch now", runner.batch_size)
        yield _gauge("engine_kv_cache_bytes", "KV cache bytes held by the pooled API caches and UI sessions",
                     s.store.used_bytes)
        yield _gauge("engine_kv_cache_budget_bytes", "The KV cache byte budget (--kv-budget)", s.store.max_bytes)
        yield CounterMetricFamily("engine_kv_cache_evictions", "Caches dropped to keep within the budget",
                                  value=s.store.evictions)
        yield CounterMetricFamily("engine_requests_rejected", "Requests refused with 429 (server full)",
                                  value=s.rejected)
        yield CounterMetricFamily("engine_scheduler_steps", "Batched forwards run", value=runner.steps)
        yield CounterMetricFamily("engine_scheduler_rows", "Token rows run (prompt chunks and decode tokens)",
                                  value=runner.rows)
        yield _histogram("engine_batch_size", "Sequences per batched forward step", runner.step_sizes.copy(),
                         BATCH_BUCKETS)


def metrics_of(conn) -> Metrics | None:
    """The Metrics of the app that a request, WebSocket or ASGI scope came to (None for an app without them)."""
    app = conn.get("app") if isinstance(conn, dict) else conn.app
    service = getattr(getattr(app, "state", None), "service", None)
    return getattr(service, "metrics", None)


class Count:
    """ASGI middleware: counts each HTTP request by endpoint (the matched route's path) and response status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            metrics = metrics_of(scope)
            if metrics is not None:
                metrics.requests.labels(route or "other", str(status[0])).inc()


@router.get("/metrics")
async def metrics(request: Request):
    return Response(metrics_of(request).text(), media_type=CONTENT_TYPE_LATEST)
