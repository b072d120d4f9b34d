"""GET /metrics: Prometheus text with tuneserve's series and vLLM's own engine gauges.

vLLM's AsyncLLM registers its `vllm:*` series in prometheus_client's default registry.
"""

from prometheus_client import REGISTRY, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tuneserve.server.engine import Engine

ENGINE_UNFINISHED = Gauge(
    "tuneserve_engine_unfinished_requests",
    "Requests the engine holds (running + waiting), read when scraped.",
)


def render_metrics(engine: Engine) -> tuple[bytes, str]:
    ENGINE_UNFINISHED.set(engine.get_num_unfinished_requests())
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
