"""Hostile and malformed HTTP requests against `cmlp proxy`: OpenAI-shaped 4xx, never a trace.

Raw http.client requests, so the bodies and headers are exactly what a bad client sends.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from cmlp.proxy.app import ProxyConfig, create_app  # noqa: E402
from cmlp.proxy.server import ProxyServer  # noqa: E402
from tests.helpers.proxy_fake import fake_backend  # noqa: E402

MODEL = "gpt2-fake"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server():
    backend = fake_backend()
    backend.verify()
    srv = ProxyServer(create_app(backend, ProxyConfig()), "127.0.0.1:0").start()
    yield srv
    srv.stop()


def request(server, method, path, body=None, headers=None):
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def assert_openai_error(status, data, want_status, *, param=None, code=None):
    assert status == want_status, data
    text = data.decode()
    assert "Traceback" not in text and 'File "' not in text
    body = json.loads(text)
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


# the cases the issue names ----------------------------------------------------
def test_unknown_model_is_404(server):
    for path, body in (
        (COMPLETIONS, {"model": "gpt-4", "prompt": "x"}),
        (CHAT, {"model": "gpt-4", "messages": MSGS}),
    ):
        assert_openai_error(*request(server, "POST", path, body), 404, param="model", code="model_not_found")


def test_negative_max_tokens_is_400(server):
    for mt in (-1, 0):
        err = assert_openai_error(
            *request(server, "POST", COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": mt}),
            400,
            param="max_tokens",
        )
        assert "minimum" in err["message"]


def test_temperature_5_is_400(server):
    assert_openai_error(
        *request(server, "POST", CHAT, {"model": MODEL, "messages": MSGS, "temperature": 5}),
        400,
        param="temperature",
    )


def test_missing_messages_is_400(server):
    for body in ({"model": MODEL}, {"model": MODEL, "messages": []}, {"model": MODEL, "messages": None}):
        assert_openai_error(*request(server, "POST", CHAT, body), 400, param="messages")


def test_2mb_body_is_413(server):
    big = {"model": MODEL, "prompt": "a" * (2 * 1024 * 1024)}
    assert_openai_error(*request(server, "POST", COMPLETIONS, big), 413, code="request_too_large")


def test_2mb_chunked_body_without_length_is_413(server):
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", COMPLETIONS)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    status = None
    try:
        piece = b"a" * 65536
        for _ in range(32):  # 2 MiB in chunks
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy may stop reading early
    resp = conn.getresponse()
    status, data = resp.status, resp.read()
    conn.close()
    assert_openai_error(status, data, 413)


def test_invalid_json_is_400(server):
    for raw in (
        b"{",
        b"not json",
        b'{"model": "gpt2-fake", "prompt": "x",}',
        b"\xff\xfe",
        b'{"model": "a", "model": "b", "prompt": "x"}',  # duplicate key
        b"[" * 100000 + b"]" * 100000,
    ):  # nesting bomb
        assert_openai_error(*request(server, "POST", COMPLETIONS, raw), 400, code="invalid_json")


# strict types and ranges ------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", True),
        ("max_tokens", 1.5),
        ("max_tokens", "16"),
        ("max_tokens", 2**40),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("temperature", True),
        ("top_p", 0),
        ("top_p", 1.01),
        ("top_k", -1),
        ("seed", 1.0),
        ("seed", 2**64),
        ("seed", False),
        ("n", 2),
        ("n", 0),
        ("stream", "yes"),
        ("user", 5),
        ("user", "u" * 1000),
        ("stop", 5),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
        ("stop", ["x" * 65]),
        ("stop", [None]),
        ("frequency_penalty", 0.5),
        ("presence_penalty", 1),
        ("logit_bias", {"50256": -100}),
        ("logprobs", 2),
        ("echo", True),
        ("best_of", 3),
        ("suffix", "end"),
        ("stream_options", {"include_usage": True}),  # only allowed with stream
        ("bogus_parameter", 1),
    ],
)
def test_completion_bad_field_is_400(server, field, value):
    body = {"model": MODEL, "prompt": "x", field: value}
    assert_openai_error(*request(server, "POST", COMPLETIONS, body), 400, param=field)


@pytest.mark.parametrize(
    "messages",
    [
        "hi",
        [1],
        [{"content": "no role"}],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "x", "extra": 1}],
        [{"role": "user", "content": "x", "name": 3}],
    ],
)
def test_chat_bad_messages_is_400(server, messages):
    err = assert_openai_error(*request(server, "POST", CHAT, {"model": MODEL, "messages": messages}), 400)
    assert err["param"].startswith("messages")


@pytest.mark.parametrize(
    "field,value",
    [
        ("logprobs", True),
        ("tools", [{"type": "function"}]),
        ("tool_choice", "auto"),
        ("response_format", {"type": "json_object"}),
        ("max_completion_tokens", -3),
    ],
)
def test_chat_unsupported_features_are_400(server, field, value):
    assert_openai_error(
        *request(server, "POST", CHAT, {"model": MODEL, "messages": MSGS, field: value}), 400, param=field
    )


@pytest.mark.parametrize(
    "prompt", [None, 5, [], [-1], [2**31], ["a", "b"], [[1], [2]], [1, "a"], {"text": "x"}]
)
def test_bad_prompt_is_400(server, prompt):
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1}
    assert_openai_error(*request(server, "POST", COMPLETIONS, body), 400, param="prompt")


def test_neutral_values_of_unsupported_parameters_are_accepted(server):
    body = {
        "model": MODEL,
        "prompt": "x",
        "max_tokens": 2,
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "logit_bias": {},
        "logprobs": None,
        "echo": False,
        "best_of": 1,
        "n": 1,
        "user": "someone",
        "seed": -5,
        "suffix": None,
    }
    status, data = request(server, "POST", COMPLETIONS, body)
    assert status == 200, data
    body = {
        "model": MODEL,
        "messages": MSGS,
        "max_completion_tokens": 2,
        "logprobs": False,
        "tools": [],
        "response_format": {"type": "text"},
        "parallel_tool_calls": True,
    }
    status, data = request(server, "POST", CHAT, body)
    assert status == 200, data


def test_lone_surrogates_are_400(server):
    for path, body, param in (
        (COMPLETIONS, b'{"model": "gpt2-fake", "prompt": "a\\ud800b"}', "prompt"),
        (COMPLETIONS, b'{"model": "gpt2-fake", "prompt": "a", "stop": "\\udfff"}', "stop"),
        (
            CHAT,
            b'{"model": "gpt2-fake", "messages": [{"role": "user", "content": "\\ud83d"}]}',
            "messages[0].content",
        ),
    ):
        assert_openai_error(*request(server, "POST", path, body), 400, param=param)


# transport-level ---------------------------------------------------------------
def test_wrong_content_type_is_415(server):
    # also what keeps a web page's cross-site "simple" POST (text/plain) out
    assert_openai_error(
        *request(
            server,
            "POST",
            COMPLETIONS,
            {"model": MODEL, "prompt": "x"},
            headers={"Content-Type": "text/plain"},
        ),
        415,
    )


def test_dns_rebinding_host_is_refused(server):
    assert_openai_error(
        *request(
            server,
            "POST",
            COMPLETIONS,
            {"model": MODEL, "prompt": "x"},
            headers={"Host": "evil.example:8000"},
        ),
        403,
    )
    status, _ = request(server, "GET", "/v1/models", headers={"Host": "localhost:8000"})
    assert status == 200


def test_unknown_route_and_method(server):
    assert_openai_error(*request(server, "GET", "/v1/nothing"), 404)
    assert_openai_error(*request(server, "GET", COMPLETIONS), 405)
    assert_openai_error(*request(server, "DELETE", "/v1/models"), 405)


def test_bad_content_length_is_refused(server):
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: -5\r\n\r\n"
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 4")


def test_streaming_wire_format_is_exact(server):
    status, data = request(
        server,
        "POST",
        COMPLETIONS,
        {
            "model": MODEL,
            "prompt": "x",
            "max_tokens": 3,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200
    events = data.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert len(chunks) == 5
    for c in chunks:
        assert c["object"] == "text_completion" and c["model"] == MODEL
        assert c["id"] == chunks[0]["id"] and "usage" in c
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None] * 3 + ["length"]
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 3
    status, data = request(
        server, "POST", CHAT, {"model": MODEL, "messages": MSGS, "max_tokens": 2, "stream": True}
    )
    events = data.decode().split("\n\n")
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all("usage" not in c for c in chunks)
