"""The OpenAI-compatible HTTP app (Starlette): routes, auth, body limits, streaming.

Request path: bearer check -> body read with a byte cap (413 before parsing) ->
strict JSON -> schema validation -> model check -> prompt (chat template for chat)
-> one client generation in its own thread (bridge.TokenStream) -> JSON or SSE.
Errors are OpenAI-shaped at every step; a failure after the first streamed token
ends the stream with an error event and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cmlp import strict_json
from cmlp.chat_template import render_chat
from cmlp.proxy import responses as R
from cmlp.proxy.bridge import CANCELLED, END, Failure, TokenStream
from cmlp.proxy.errors import ApiError, from_exception, invalid
from cmlp.proxy.schema import ChatRequest, parse_chat, parse_completion

log = logging.getLogger("cmlp.proxy")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt that fits a context
DEFAULT_MAX_CONCURRENT = 64  # generations in flight; more -> 503 server_busy


@dataclass(frozen=True)
class ProxyConfig:
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    # Chat without max_tokens when the prompt length is unknown (no tokenizer in the
    # client): generate at most this many (OpenAI would fill the context).
    chat_default_max_tokens: int = 512


class _Proxy:
    def __init__(self, backend, config: ProxyConfig):
        self.backend = backend
        self.config = config
        self.info = backend.model_info()
        self.created = int(time.time())
        self.active = 0
        self._key = config.api_key.encode() if config.api_key else None

    # -- request gates ------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self._key is None:
            # No key (loopback only): refuse Host names other than IP literals and
            # localhost, so a web page cannot reach us through DNS rebinding.
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.find("]")]
            # (no Host at all is not a browser: browsers always send one)
            if host and name != "localhost" and not _is_ip(name):
                raise ApiError(
                    403, "Requests must address the proxy by IP or localhost.", code="forbidden_host"
                )
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
                code="invalid_api_key",
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_json(self, request: Request):
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            # Also what keeps a web page's "simple" cross-site POST out.
            raise ApiError(415, "Content-Type must be application/json.", code="unsupported_media_type")
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise invalid("Invalid Content-Length header.")
            if int(declared) > limit:
                raise _too_large(int(declared), limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(len(body), limit)
        try:
            return strict_json.loads(body.decode("utf-8"), check_strings=False)  # per field, below
        except (UnicodeDecodeError, ValueError) as exc:
            raise invalid(
                f"We could not parse the JSON body of your request. ({' '.join(str(exc).split())})",
                code="invalid_json",
            ) from None

    def check_model(self, model: str) -> None:
        if model != self.info.model_name:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )

    # -- generation -----------------------------------------------------------
    def prompt_and_max_tokens(self, req):
        s = req.sampling
        limit = self.info.max_seq_len
        prompt: str | list[Any]  # text, or token ids
        if isinstance(req, ChatRequest):
            prompt = render_chat(
                [dict(m) for m in req.messages],
                self.info.chat_template,
                bos_token=self.info.bos_token,
                eos_token=self.info.eos_token,
            )
            param = "messages"
        else:
            prompt = req.prompt if isinstance(req.prompt, str) else list(req.prompt)
            param = "prompt"
        n_prompt = len(prompt) if isinstance(prompt, list) else self.backend.count_tokens(prompt)
        max_tokens = s.max_tokens
        if max_tokens is None:  # chat default: fill the context, as OpenAI does
            max_tokens = (
                limit - n_prompt if n_prompt is not None else min(self.config.chat_default_max_tokens, limit)
            )
        if n_prompt is not None and (n_prompt + max_tokens > limit or max_tokens < 1):
            where = "messages" if param == "messages" else "prompt"
            raise invalid(
                f"This model's maximum context length is {limit} tokens. However, "
                f"you requested {n_prompt + max(max_tokens, 1)} tokens ({n_prompt} in "
                f"the {where}, {max(max_tokens, 1)} in the completion). Please reduce "
                f"the length of the {where} or completion.",
                param=param,
                code="context_length_exceeded",
            )
        return prompt, max_tokens, param

    async def generate(self, request: Request, chat: bool) -> Response:
        self.authorize(request)
        body = await self.read_json(request)
        req = parse_chat(body) if chat else parse_completion(body)
        s = req.sampling
        self.check_model(s.model)
        try:
            # the template and the tokenizer may take milliseconds on a long conversation:
            # off the event loop, which keeps streaming the other requests' tokens
            prompt, max_tokens, param = await asyncio.to_thread(self.prompt_and_max_tokens, req)
            params = self.backend.params(
                max_tokens=max_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                seed=s.seed,
                stop=s.stop,
            )
        except (ValueError, TypeError) as exc:  # SamplingParams' own checks
            raise invalid(str(exc)) from None
        except Exception as exc:
            raise from_exception(exc, prompt_param="messages" if chat else "prompt") from None
        if self.active >= self.config.max_concurrent:
            raise ApiError(
                503,
                "The proxy is at its limit of concurrent generations; try again later.",
                type="server_error",
                code="server_busy",
            )
        self.active += 1
        released = False

        def release() -> None:  # exactly once, whichever path ends the request
            nonlocal released
            if not released:
                released = True
                stream.cancel()
                self.active -= 1

        handed_over = False
        stream = TokenStream(lambda: self.backend.generate(prompt, params)).start()
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, stream))
        try:
            first = await stream.next_batch()
            if s.stream:
                failure = _failure(first)
                if failure is not None:
                    raise from_exception(failure, prompt_param=param)
                watcher.cancel()  # StreamingResponse listens for the disconnect from now on
                shape = R.Shape(self.info.model_name, chat, s.include_usage)
                handed_over = True
                return _EventStream(
                    self._sse(stream, first, shape, release),
                    release,
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            return await self._collect(stream, first, chat, param)
        finally:
            watcher.cancel()
            if not handed_over:
                release()

    async def _collect(self, stream: TokenStream, batch: list, chat: bool, param: str):
        text = []
        finished = None
        while True:
            for item in batch:
                if item is END:
                    if finished is None:
                        raise from_exception(_no_finish())
                    shape = R.Shape(self.info.model_name, chat)
                    reason = R.FINISH_REASON.get(finished.finish_reason, "stop")
                    return JSONResponse(
                        shape.full("".join(text), reason, finished.prompt_tokens, finished.completion_tokens)
                    )
                if item is CANCELLED:
                    return Response(status_code=499)  # nobody is listening any more
                if isinstance(item, Failure):
                    raise from_exception(item.exc, prompt_param=param)
                if finished is not None:
                    raise from_exception(_no_finish())
                if self.backend.is_finished(item):
                    finished = item
                else:
                    text.append(item.text)
            batch = await stream.next_batch()

    async def _sse(self, stream: TokenStream, batch: list, shape: R.Shape, release):
        finished = None
        try:
            out = [shape.chunk_role()] if shape.chat else []
            while True:
                for item in batch:
                    if item is END:
                        if finished is None:
                            out.append(_error_event(_no_finish()))
                        else:
                            out.append(
                                shape.chunk_finish(R.FINISH_REASON.get(finished.finish_reason, "stop"))
                            )
                            if shape.include_usage:
                                out.append(
                                    shape.chunk_usage(finished.prompt_tokens, finished.completion_tokens)
                                )
                        out.append(R.DONE)
                        yield "".join(out).encode()
                        return
                    if item is CANCELLED:
                        return
                    if isinstance(item, Failure):
                        out.append(_error_event(item.exc))
                        out.append(R.DONE)
                        yield "".join(out).encode()
                        return
                    if finished is not None:
                        out.append(_error_event(_no_finish()))
                        out.append(R.DONE)
                        yield "".join(out).encode()
                        return
                    if self.backend.is_finished(item):
                        finished = item
                    elif item.text:
                        out.append(shape.chunk_token(item.text))
                if out:
                    yield "".join(out).encode()
                    out = []
                batch = await stream.next_batch()
        finally:
            release()

    # -- routes ---------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self.generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self.generate(request, chat=True)

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [R.model_card(self.info.model_name, self.created)]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        self.check_model(request.path_params["model"])
        return JSONResponse(R.model_card(self.info.model_name, self.created))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "active": self.active})


class _EventStream(StreamingResponse):
    """A StreamingResponse that releases its generation however the response ends,
    even when the client is gone before the body iterator ever started."""

    def __init__(self, content, release, **kw):
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413, f"Request body of {size} bytes exceeds the limit of {limit} bytes.", code="request_too_large"
    )


def _no_finish() -> Exception:
    from cmlp.errors import ProtocolError

    return ProtocolError("the generation ended without exactly one final Finished event")


def _failure(batch: list):
    """The exception that ended the generation before it yielded anything, if any."""
    first = batch[0]
    if isinstance(first, Failure):
        return first.exc
    if first is END:
        return _no_finish()
    return None


def _error_event(exc: BaseException) -> str:
    err = from_exception(exc)
    return R.sse(err.body())


async def _cancel_on_disconnect(request: Request, stream: TokenStream) -> None:
    """Cancel the generation when the HTTP client goes away before we answer."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancel()
            return


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(
        ApiError(exc.status_code, str(exc.detail), code=kind).body(), status_code=exc.status_code
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    err = from_exception(exc)
    return JSONResponse(err.body(), status_code=err.status)


def create_app(backend, config: ProxyConfig | None = None) -> Starlette:
    """The ASGI app for ``backend`` (a ClientBackend whose stage 0 is already verified)."""
    proxy = _Proxy(backend, config or ProxyConfig())
    routes = [
        Route("/v1/completions", proxy.completions, methods=["POST"]),
        Route("/v1/chat/completions", proxy.chat_completions, methods=["POST"]),
        Route("/v1/models", proxy.models, methods=["GET"]),
        Route("/v1/models/{model:path}", proxy.model, methods=["GET"]),
        Route("/health", proxy.health, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.proxy = proxy
    return app
