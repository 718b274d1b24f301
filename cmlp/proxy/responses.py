"""OpenAI response bodies and server-sent-event chunks (sans-I/O string building).

The per-token chunk is a prebuilt prefix + the JSON-escaped text + a prebuilt suffix,
so a streamed token costs one ``json.dumps`` of a short string and no dict building.
"""

from __future__ import annotations

import json
import secrets
import time

DONE = "data: [DONE]\n\n"
# The client contract's finish reasons -> OpenAI's ("eos" is a natural stop).
FINISH_REASON = {"eos": "stop", "stop": "stop", "length": "length"}


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def sse(obj) -> str:
    return f"data: {_dumps(obj)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Shape:
    """Everything one response repeats: id, creation time, model, kind, usage flag."""

    def __init__(self, model: str, chat: bool, include_usage: bool = False):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = (
            f'data: {{"id":{_dumps(self.id)},"object":"{obj}","created":{self.created},'
            f'"model":{_dumps(model)},"system_fingerprint":null,"choices":['
        )
        tail = "]" + (',"usage":null' if include_usage else "") + "}\n\n"
        if chat:
            self._token_head = head + '{"index":0,"delta":{"content":'
            self._token_tail = '},"logprobs":null,"finish_reason":null}' + tail
        else:
            self._token_head = head + '{"text":'
            self._token_tail = ',"index":0,"logprobs":null,"finish_reason":null}' + tail
        self._head = head
        self._tail = tail

    # -- streaming ---------------------------------------------------------
    def chunk_token(self, text: str) -> str:
        return self._token_head + json.dumps(text) + self._token_tail

    def chunk_role(self) -> str:
        return (
            self._head + '{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}' + self._tail
        )

    def chunk_finish(self, finish_reason: str) -> str:
        reason = _dumps(finish_reason)
        if self.chat:
            choice = '{"index":0,"delta":{},"logprobs":null,"finish_reason":' + reason + "}"
        else:
            choice = '{"text":"","index":0,"logprobs":null,"finish_reason":' + reason + "}"
        return self._head + choice + self._tail

    def chunk_usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return self._head + '],"usage":' + _dumps(usage(prompt_tokens, completion_tokens)) + "}\n\n"

    # -- whole responses ---------------------------------------------------
    def full(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens),
        }


def model_card(model: str, created: int) -> dict:
    return {"id": model, "object": "model", "created": created, "owned_by": "cmlp"}
