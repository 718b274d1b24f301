"""`cmlp proxy` against the official openai package, over a fake of the client contract.

The proxy runs in-process (uvicorn on a free loopback port); the fake client
(tests/helpers/proxy_fake.py) implements the contract's behaviour: seeded sampling, stop
sequences with hold-back, EOS, context limit, cancellation, injected failures.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from cmlp.proxy.app import ProxyConfig, create_app  # noqa: E402
from cmlp.proxy.server import ProxyServer  # noqa: E402
from tests.helpers.proxy_fake import _TOKENIZER as TOKENIZER  # noqa: E402
from tests.helpers.proxy_fake import fake_backend  # noqa: E402

MODEL = "gpt2-fake"


@pytest.fixture
def start_proxy():
    servers = []

    def start(config=None, **fake):
        backend = fake_backend(**fake)
        backend.verify()
        server = ProxyServer(create_app(backend, config), "127.0.0.1:0").start()
        servers.append(server)
        key = config.api_key if config and config.api_key else "unused"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)
        return server, client, backend.client

    yield start
    for server in servers:
        server.stop()


def _stream_completion(client, **kw):
    text, finish, usage, n_chunks = [], None, None, 0
    for chunk in client.completions.create(stream=True, **kw):
        n_chunks += 1
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
            continue
        (choice,) = chunk.choices
        text.append(choice.text)
        if choice.finish_reason is not None:
            finish = choice.finish_reason
    return "".join(text), finish, usage, n_chunks


def _stream_chat(client, **kw):
    text, finish, usage, roles = [], None, None, []
    for chunk in client.chat.completions.create(stream=True, **kw):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
            continue
        (choice,) = chunk.choices
        if choice.delta.role:
            roles.append(choice.delta.role)
        text.append(choice.delta.content or "")
        if choice.finish_reason is not None:
            finish = choice.finish_reason
    return "".join(text), finish, usage, roles


# --------------------------------------------------------------------------
# completions and chat, streaming and not
# --------------------------------------------------------------------------
def test_completion_non_streaming(start_proxy):
    _, client, fake = start_proxy()
    r = client.completions.create(model=MODEL, prompt="The weather today", max_tokens=7, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    (choice,) = r.choices
    assert choice.finish_reason == "length" and choice.index == 0 and choice.text.strip()
    assert r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens == len(TOKENIZER.encode("The weather today"))
    assert fake.prompts == ["The weather today"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0), dict(temperature=0.9, seed=1234), dict(temperature=1.5, top_p=0.8, seed=7)],
)
def test_completion_streamed_text_equals_non_streamed(start_proxy, sampling):
    _, client, _ = start_proxy()
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, **sampling)
    full = client.completions.create(**kw)
    text, finish, usage, n_chunks = _stream_completion(client, stream_options={"include_usage": True}, **kw)
    assert text == full.choices[0].text
    assert finish == full.choices[0].finish_reason == "length"
    assert usage.model_dump() == full.usage.model_dump()
    assert n_chunks == 12 + 2  # one per token, the finish chunk, the usage chunk


def test_seeded_sampling_differs_between_seeds(start_proxy):
    _, client, _ = start_proxy()
    texts = {
        client.completions.create(model=MODEL, prompt="x", max_tokens=16, temperature=1, seed=s)
        .choices[0]
        .text
        for s in (1, 2, 3)
    }
    assert len(texts) > 1


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.7, seed=99)])
def test_chat_streamed_text_equals_non_streamed(start_proxy, sampling):
    _, client, fake = start_proxy()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about cats."},
    ]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, **sampling)
    assert full.object == "chat.completion" and full.id.startswith("chatcmpl-")
    msg = full.choices[0].message
    assert msg.role == "assistant" and msg.content
    text, finish, usage, roles = _stream_chat(
        client,
        model=MODEL,
        messages=messages,
        max_tokens=10,
        stream_options={"include_usage": True},
        **sampling,
    )
    assert roles == ["assistant"]
    assert text == msg.content
    assert finish == full.choices[0].finish_reason == "length"
    assert usage.model_dump() == full.usage.model_dump()
    # GPT-2 has no template: the documented plain-text one reached the client
    assert fake.prompts[-1] == "Be brief.\n\nUser: Tell me about cats.\nAssistant:"


def test_chat_uses_model_template(start_proxy):
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    _, client, fake = start_proxy(chat_template=template)
    client.chat.completions.create(
        model=MODEL,
        max_tokens=2,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
        ],
    )
    assert fake.prompts[-1] == "<|user|>Hi there<|endoftext|><|assistant|>"


def test_chat_template_rejection_is_400(start_proxy):
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    _, client, _ = start_proxy(chat_template=template)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            max_tokens=2,
            messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
        )
    assert "System role not supported" in info.value.message


def test_chat_default_max_tokens_fills_the_context(start_proxy):
    _, client, fake = start_proxy(max_seq_len=40, expose_tokenizer=True)
    r = client.chat.completions.create(
        model=MODEL, temperature=0, messages=[{"role": "user", "content": "Hello"}]
    )
    n_prompt = r.usage.prompt_tokens
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 40 - n_prompt


# --------------------------------------------------------------------------
# finish reasons and usage
# --------------------------------------------------------------------------
def test_stop_sequence_finishes_with_stop(start_proxy):
    _, client, _ = start_proxy()
    # find what greedy generates, then stop on a word inside it
    free = client.completions.create(model=MODEL, prompt="Hello", max_tokens=12, temperature=0)
    words = free.choices[0].text.split(" ")
    stop_word = " " + words[4]
    expected = free.choices[0].text[: free.choices[0].text.index(stop_word)]
    for stop in (stop_word, [stop_word, "zzz"]):
        r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=12, temperature=0, stop=stop)
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].text == expected  # the stop sequence itself is not returned
        assert r.usage.completion_tokens < 12
        text, finish, usage, _ = _stream_completion(
            client,
            model=MODEL,
            prompt="Hello",
            max_tokens=12,
            temperature=0,
            stop=stop,
            stream_options={"include_usage": True},
        )
        assert (text, finish) == (expected, "stop")
        assert usage.completion_tokens == r.usage.completion_tokens


def test_eos_finishes_with_stop(start_proxy):
    _, client, _ = start_proxy(eos_after=3)
    r = client.completions.create(model=MODEL, prompt="Hi", max_tokens=10, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4
    assert "<|endoftext|>" not in r.choices[0].text


def test_max_tokens_finishes_with_length(start_proxy):
    _, client, _ = start_proxy()
    r = client.chat.completions.create(
        model=MODEL, max_tokens=5, temperature=0, messages=[{"role": "user", "content": "Hi"}]
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_token_id_prompt(start_proxy):
    _, client, fake = start_proxy()
    r = client.completions.create(model=MODEL, prompt=[464, 3797, 3332], max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == 3
    assert list(fake.prompts[-1]) == [464, 3797, 3332]


def test_models_and_health(start_proxy):
    server, client, _ = start_proxy()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    import urllib.request

    with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
        assert resp.status == 200


# --------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------
def test_context_too_long_is_400_context_length_exceeded(start_proxy):
    _, client, _ = start_proxy(max_seq_len=32)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="word " * 30, max_tokens=16)
    assert info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"
    # with the tokenizer visible the proxy answers before the client is called
    _, client, fake = start_proxy(max_seq_len=32, expose_tokenizer=True)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, max_tokens=30, messages=[{"role": "user", "content": "word " * 10}]
        )
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 32 tokens" in info.value.message
    assert fake.started == 0


def test_busy_pipeline_is_503(start_proxy):
    _, client, _ = start_proxy(busy=True)
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert info.value.status_code == 503 and info.value.code == "server_busy"


def test_failure_before_first_token_is_503(start_proxy):
    _, client, _ = start_proxy(fail_after=0)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            r = client.completions.create(model=MODEL, prompt="x", max_tokens=5, stream=stream)
            list(r) if stream else None
        assert info.value.status_code == 503 and info.value.code == "pipeline_unavailable"


def test_failure_mid_stream_ends_with_error_event(start_proxy):
    _, client, fake = start_proxy(fail_after=3)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.completions.create(
            model=MODEL, prompt="x", max_tokens=10, temperature=0, stream=True
        ):
            got.append(chunk.choices[0].text)
    assert len(got) == 3  # the tokens before the failure
    assert "stage 1 link broken" in info.value.message
    # and non-streaming: a 503 with no partial text
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=10)


def test_disconnect_mid_stream_cancels_the_generation(start_proxy):
    _, client, fake = start_proxy(token_delay=0.01)
    stream = client.completions.create(model=MODEL, prompt="x", max_tokens=500, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.cancelled == 1 and fake.completed == 0 and fake.active == 0


def test_sixteen_concurrent_streams(start_proxy):
    _, client, fake = start_proxy(token_delay=0.002)

    def one(i):
        text, finish, usage, _ = _stream_completion(
            client,
            model=MODEL,
            prompt=f"prompt {i}",
            max_tokens=24,
            temperature=0.8,
            seed=i,
            stream_options={"include_usage": True},
        )
        full = client.completions.create(
            model=MODEL, prompt=f"prompt {i}", max_tokens=24, temperature=0.8, seed=i
        )
        return text == full.choices[0].text and finish == "length" and usage.completion_tokens == 24

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert all(results)
    assert fake.max_active > 1  # the requests really overlapped in the client
    assert fake.completed == 32 and fake.cancelled == 0


def test_concurrency_limit_is_503(start_proxy):
    _, client, fake = start_proxy(ProxyConfig(max_concurrent=1), token_delay=0.01)
    # 1000 tokens at 10 ms: the first stream holds the only slot for 10 s
    stream = client.completions.create(model=MODEL, prompt="x", max_tokens=1000, stream=True)
    next(iter(stream))
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL, prompt="y", max_tokens=2)
    assert info.value.code == "server_busy"
    stream.close()


# --------------------------------------------------------------------------
# API key
# --------------------------------------------------------------------------
def test_api_key_required_when_configured(start_proxy):
    server, client, _ = start_proxy(ProxyConfig(api_key="s3cret-key"))
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    for key in ("wrong", "s3cret-kez"):
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def _health_active(server) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
        return json.loads(resp.read())["active"]


def test_disconnect_while_waiting_for_a_non_streamed_answer_cancels(start_proxy):
    import http.client
    import json

    server, _, fake = start_proxy(token_delay=0.01)
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST",
        "/v1/completions",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1000}),
    )
    deadline = time.monotonic() + 10
    while fake.started == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.sock.close()  # the HTTP client goes away before the answer
    while (fake.cancelled == 0 or _health_active(server)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.cancelled == 1 and fake.completed == 0
    assert _health_active(server) == 0


def test_every_request_path_releases_its_slot(start_proxy):
    server, client, fake = start_proxy(ProxyConfig(max_concurrent=2), token_delay=0.002)
    for _ in range(3):  # more requests than slots, one after another
        client.completions.create(model=MODEL, prompt="x", max_tokens=3)
        list(client.completions.create(model=MODEL, prompt="x", max_tokens=3, stream=True))
        stream = client.completions.create(model=MODEL, prompt="x", max_tokens=100, stream=True)
        next(iter(stream))
        stream.close()
    deadline = time.monotonic() + 10
    while _health_active(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _health_active(server) == 0
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).choices


def test_no_content_in_the_logs(start_proxy, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    _, client, _ = start_proxy(fail_after=2)
    secret = "my-secret-diagnosis-4711"
    client.completions.create(model=MODEL, prompt=secret, max_tokens=2, user=secret + "-user")
    client.chat.completions.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": secret}])
    with pytest.raises(openai.APIError):  # a failure mid-stream is logged, not its prompt
        list(client.completions.create(model=MODEL, prompt=secret, max_tokens=5, stream=True))
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=secret, temperature=9)
    assert caplog.records  # uvicorn and the proxy did log at DEBUG
    assert secret not in caplog.text
