"""cmlp.serve_metrics: the hooks `cmlp serve` calls, checked by scraping /metrics over HTTP."""

from __future__ import annotations

import socket
import urllib.request

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cmlp.serve_metrics import MAX_ERROR_KINDS, ServeMetrics, start_metrics_server  # noqa: E402


def scrape(server) -> dict:
    with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.fixture
def served():
    metrics = ServeMetrics(n_stages=3)
    server = start_metrics_server("127.0.0.1:0", metrics)
    yield metrics, server
    server.close()


def test_request_lifecycle_is_counted_and_timed(served):
    metrics, server = served
    s = scrape(server)
    assert s[("cmlp_requests_started_total", ())] == 0
    assert s[("cmlp_active_sequences", ())] == 0
    assert all(s[("cmlp_stage_up", (("stage", str(i)),))] == 0 for i in range(3))

    for ttft, gaps, reason in ((0.03, [0.004, 0.006, 0.2], "length"), (0.7, [], "eos")):
        metrics.request_started()
        metrics.first_token(ttft)
        metrics.token(None)  # the first token has no inter-token gap
        for g in gaps:
            metrics.token(g)
        metrics.request_finished(reason)
    metrics.request_started()
    metrics.request_finished(None, error="PipelineUnavailable")
    metrics.request_finished(None, error="client gone")
    metrics.set_active(5)
    metrics.set_queue_depth(2)
    metrics.set_stage_up(0, True)
    metrics.set_stage_up(2, True)
    metrics.set_stage_up(2, False)

    s = scrape(server)
    assert s[("cmlp_requests_started_total", ())] == 3
    fin = "cmlp_requests_finished_total"
    assert s[(fin, (("error", ""), ("finish_reason", "length")))] == 1
    assert s[(fin, (("error", ""), ("finish_reason", "eos")))] == 1
    assert s[(fin, (("error", "PipelineUnavailable"), ("finish_reason", "none")))] == 1
    assert s[(fin, (("error", "client gone"), ("finish_reason", "none")))] == 1
    assert s[("cmlp_generated_tokens_total", ())] == 5
    ttft = "cmlp_time_to_first_token_seconds"
    assert s[(ttft + "_count", ())] == 2
    assert s[(ttft + "_sum", ())] == pytest.approx(0.73)
    assert s[(ttft + "_bucket", (("le", "0.05"),))] == 1
    assert s[(ttft + "_bucket", (("le", "1.0"),))] == 2
    itl = "cmlp_inter_token_latency_seconds"
    assert s[(itl + "_count", ())] == 3
    assert s[(itl + "_bucket", (("le", "0.005"),))] == 1
    assert s[(itl + "_bucket", (("le", "0.01"),))] == 2
    assert s[(itl + "_bucket", (("le", "+Inf"),))] == 3
    assert s[("cmlp_active_sequences", ())] == 5
    assert s[("cmlp_queue_depth", ())] == 2
    assert [s[("cmlp_stage_up", (("stage", str(i)),))] for i in range(3)] == [1, 0, 0]


def test_labels_stay_bounded_and_content_free(served):
    metrics, server = served
    # a free-form string (say, an error message carrying text) never becomes a label
    metrics.request_finished("length", error="prompt was: my secret diagnosis")
    metrics.request_finished("something odd")
    for i in range(MAX_ERROR_KINDS + 10):
        metrics.request_finished(None, error=f"Kind{i}")
    s = scrape(server)
    labels = {dict(k[1]).get("error") for k in s if k[0] == "cmlp_requests_finished_total"}
    assert "other" in labels and len(labels) <= MAX_ERROR_KINDS + 2
    assert not any("secret" in str(k) for k in s)
    assert s[("cmlp_requests_finished_total", (("error", ""), ("finish_reason", "other")))] == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.first_token(-1.0),
        lambda m: m.first_token(float("nan")),
        lambda m: m.token(-0.5),
        lambda m: m.set_active(-1),
        lambda m: m.set_active(True),
        lambda m: m.set_queue_depth(1.5),
        lambda m: m.set_stage_up(3, True),
        lambda m: m.set_stage_up(-1, True),
    ],
)
def test_bad_values_are_refused(call):
    with pytest.raises(ValueError):
        call(ServeMetrics(n_stages=3))


def test_two_instances_do_not_share_state():
    a, b = ServeMetrics(1), ServeMetrics(1)
    a.request_started()
    with start_metrics_server("127.0.0.1:0", b) as server:
        assert scrape(server)[("cmlp_requests_started_total", ())] == 0


def test_close_frees_the_port():
    server = start_metrics_server("127.0.0.1:0", ServeMetrics(1))
    host, port = server.address.rsplit(":", 1)
    server.close()
    server.close()  # idempotent
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))


def test_bad_address_and_stage_count():
    with pytest.raises(ValueError):
        start_metrics_server("localhost:9100", ServeMetrics(1))  # IP literals only
    with pytest.raises(ValueError):
        ServeMetrics(0)
