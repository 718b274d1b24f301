"""Strict validation of OpenAI request bodies (sans-I/O: a dict in, a request or ApiError out).

Every field is checked for type and range before anything reaches the client; bool is
never accepted where a number is expected (JSON true is not 1).  Parameters OpenAI
defines but cmlp cannot honour (logprobs, penalties, tools, n > 1 ...) are accepted only
at their neutral value, so a client that sends the default still works and one that
relies on the feature gets a clear 400 instead of silently different output.  Unknown
parameters are rejected as OpenAI does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmlp.proxy.errors import ApiError, invalid

# Limits of the client contract (cmlp/client.py SamplingParams).
MAX_STOP_SEQUENCES = 4
MAX_STOP_BYTES = 64
TEMPERATURE_MAX = 2.0
# Seeds: OpenAI takes a signed 64-bit int; we also take unsigned 64-bit values.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MAX_TOKEN_ID = 2**31 - 1
MAX_MESSAGES = 4096
MAX_USER_CHARS = 512
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default for both endpoints

ROLES = ("system", "developer", "user", "assistant", "tool")
_MISSING = object()


@dataclass(frozen=True)
class Sampling:
    """What both endpoints share; max_tokens None = "as many as fit" (chat default)."""

    model: str
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class CompletionRequest:
    sampling: Sampling
    prompt: str | tuple[int, ...]


@dataclass(frozen=True)
class ChatRequest:
    sampling: Sampling
    messages: tuple[dict, ...]


# --------------------------------------------------------------------------
# Field checkers: each returns the value or raises ApiError naming the field.
# --------------------------------------------------------------------------
def _type_name(value) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _bad_type(name: str, expected: str, value) -> ApiError:
    return invalid(
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.", param=name
    )


def _int(body, name, *, lo=None, hi=None, default=None):
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int:
        raise _bad_type(name, "an integer", value)
    if lo is not None and value < lo:
        raise invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, "
            f"but got {value} instead.",
            param=name,
        )
    if hi is not None and value > hi:
        raise invalid(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, "
            f"but got {value} instead.",
            param=name,
        )
    return value


def _number(body, name, *, lo, hi, default, lo_open=False):
    value = body.get(name)
    if value is None:
        return default
    if type(value) not in (int, float):
        raise _bad_type(name, "a number", value)
    value = float(value)
    if not math.isfinite(value):
        raise invalid(f"Invalid '{name}': expected a finite number.", param=name)
    if value < lo or (lo_open and value == lo):
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise invalid(
            f"Invalid '{name}': decimal below minimum value. Expected a value {bound}, "
            f"but got {value:g} instead.",
            param=name,
        )
    if value > hi:
        raise invalid(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {hi:g}, "
            f"but got {value:g} instead.",
            param=name,
        )
    return value


def _bool(body, name, default=False):
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not bool:
        raise _bad_type(name, "a boolean", value)
    return value


def _neutral(body, name, neutral_values, what):
    """An OpenAI parameter cmlp does not implement: only its neutral value is accepted."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return
    if any(type(value) is type(v) and value == v for v in neutral_values):
        return
    raise invalid(f"'{name}' is not supported by this server ({what}).", param=name)


def _stop(body):
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _bad_type("stop", "a string or an array of strings", value)
    if len(items) > MAX_STOP_SEQUENCES:
        raise invalid(
            f"Invalid 'stop': at most {MAX_STOP_SEQUENCES} stop sequences, got {len(items)}.", param="stop"
        )
    out = []
    for item in items:
        if not isinstance(item, str):
            raise _bad_type("stop", "a string or an array of strings", item)
        size = len(_utf8(item, "stop").encode("utf-8"))
        if not 1 <= size <= MAX_STOP_BYTES:
            raise invalid(
                f"Invalid 'stop': each stop sequence must be 1 to {MAX_STOP_BYTES} "
                f"bytes of UTF-8, got {size}.",
                param="stop",
            )
        out.append(item)
    return tuple(out)


def _utf8(value: str, name: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"); they are no text and no token."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(
            f"Invalid '{name}': the string is not valid Unicode (lone surrogate).", param=name
        ) from None
    return value


def _check_known(body, known):
    for key in body:
        if key not in known:
            raise invalid(f"Unrecognized request argument supplied: {key}", param=key)


def _sampling(body, *, default_max_tokens, max_tokens_names) -> Sampling:
    model = body.get("model")
    if model is None:
        raise invalid("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise _bad_type("model", "a string", model)
    max_tokens = default_max_tokens
    given = [(n, _int(body, n, lo=1, hi=MAX_TOKEN_ID)) for n in max_tokens_names]
    given = [(n, v) for n, v in given if v is not None]
    if given:
        if len({v for _, v in given}) > 1:
            raise invalid("'max_tokens' and 'max_completion_tokens' disagree; send one.", param=given[1][0])
        max_tokens = given[0][1]
    stream = _bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise _bad_type("stream_options", "an object", options)
        _check_known(options, ("include_usage", "continuous_usage_stats"))
        include_usage = _bool(options, "include_usage")
        _neutral(options, "continuous_usage_stats", (False,), "usage is sent once, at the end")
    n = _int(body, "n", lo=1, default=1)
    if n != 1:
        raise invalid("Invalid 'n': this server generates one choice per request (n = 1).", param="n")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad_type("user", "a string", user)
    if user is not None and len(user) > MAX_USER_CHARS:
        raise invalid(f"Invalid 'user': at most {MAX_USER_CHARS} characters.", param="user")
    _neutral(body, "frequency_penalty", (0, 0.0), "no penalties")
    _neutral(body, "presence_penalty", (0, 0.0), "no penalties")
    _neutral(body, "logit_bias", ({},), "no logit bias")
    return Sampling(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", lo=0.0, hi=TEMPERATURE_MAX, default=DEFAULT_TEMPERATURE),
        top_p=_number(body, "top_p", lo=0.0, hi=1.0, default=1.0, lo_open=True),
        top_k=_int(body, "top_k", lo=0, hi=MAX_TOKEN_ID, default=0),
        seed=_int(body, "seed", lo=SEED_MIN, hi=SEED_MAX),
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
    )


_COMMON = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
)


# --------------------------------------------------------------------------
# /v1/completions
# --------------------------------------------------------------------------
_COMPLETION_FIELDS = _COMMON + ("prompt", "echo", "logprobs", "best_of", "suffix")


def parse_completion(body) -> CompletionRequest:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    _check_known(body, _COMPLETION_FIELDS)
    sampling = _sampling(
        body, default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS, max_tokens_names=("max_tokens",)
    )
    _neutral(body, "echo", (False,), "no echo")
    _neutral(body, "logprobs", (), "no logprobs")
    _neutral(body, "best_of", (1,), "one candidate per request")
    _neutral(body, "suffix", (), "no suffix")
    return CompletionRequest(sampling=sampling, prompt=_prompt(body.get("prompt", _MISSING)))


def _token_ids(value) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in value):
        return None
    return tuple(value)


def _prompt(value) -> str | tuple[int, ...]:
    if value is _MISSING or value is None:
        raise invalid("you must provide a prompt parameter", param="prompt")
    if isinstance(value, str):
        return _utf8(value, "prompt")
    if isinstance(value, list) and value:
        ids = _token_ids(value)
        if ids is not None:
            return ids
        if len(value) == 1:  # a batch of one prompt
            if isinstance(value[0], str):
                return _utf8(value[0], "prompt")
            ids = _token_ids(value[0])
            if ids is not None:
                return ids
        if all(isinstance(p, (str, list)) for p in value) and len(value) > 1:
            raise invalid("Invalid 'prompt': this server takes one prompt per request.", param="prompt")
    raise invalid(
        "Invalid 'prompt': expected a string, an array of token ids "
        f"(integers 0..{MAX_TOKEN_ID}) or an array holding one of those.",
        param="prompt",
    )


# --------------------------------------------------------------------------
# /v1/chat/completions
# --------------------------------------------------------------------------
_CHAT_FIELDS = _COMMON + (
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
)


def parse_chat(body) -> ChatRequest:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    _check_known(body, _CHAT_FIELDS)
    sampling = _sampling(
        body, default_max_tokens=None, max_tokens_names=("max_tokens", "max_completion_tokens")
    )
    _neutral(body, "logprobs", (False,), "no logprobs")
    _neutral(body, "top_logprobs", (), "no logprobs")
    _neutral(body, "tools", ([],), "no tool calls")
    _neutral(body, "functions", ([],), "no tool calls")
    _neutral(body, "tool_choice", ("none",), "no tool calls")
    _neutral(body, "function_call", ("none",), "no tool calls")
    _neutral(body, "parallel_tool_calls", (False, True), "no tool calls")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise invalid(
            "'response_format' is not supported by this server (text only).", param="response_format"
        )
    return ChatRequest(sampling=sampling, messages=_messages(body.get("messages", _MISSING)))


def _messages(value) -> tuple[dict, ...]:
    if value is _MISSING or value is None:
        raise invalid("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(value, list):
        raise _bad_type("messages", "an array", value)
    if not value:
        raise invalid(
            "Invalid 'messages': empty array. Expected an array with minimum "
            "length 1, but got an empty array instead.",
            param="messages",
        )
    if len(value) > MAX_MESSAGES:
        raise invalid(f"Invalid 'messages': at most {MAX_MESSAGES} messages.", param="messages")
    return tuple(_message(i, m) for i, m in enumerate(value))


def _message(i: int, m) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad_type(where, "an object", m)
    for key in m:
        if key not in ("role", "content", "name", "tool_call_id"):
            raise invalid(f"Unrecognized argument supplied in '{where}': {key}", param=f"{where}.{key}")
    role = m.get("role")
    if role not in ROLES:
        raise invalid(f"Invalid '{where}.role': expected one of {', '.join(ROLES)}.", param=f"{where}.role")
    out = {"role": role, "content": _content(where, role, m.get("content", _MISSING))}
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None:
            if not isinstance(m[key], str):
                raise _bad_type(f"{where}.{key}", "a string", m[key])
            out[key] = _utf8(m[key], f"{where}.{key}")
    return out


def _content(where: str, role: str, content) -> str:
    if content is _MISSING or content is None:
        if role == "assistant":
            return ""
        raise invalid(f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
    if isinstance(content, str):
        return _utf8(content, f"{where}.content")
    if isinstance(content, list):
        # Content parts: only text parts, concatenated (what a text-only model can see).
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
                or set(part) != {"type", "text"}
            ):
                raise invalid(
                    f"Invalid '{where}.content[{j}]': this server takes text parts "
                    'only ({"type": "text", "text": ...}).',
                    param=f"{where}.content",
                )
            texts.append(part["text"])
        return _utf8("".join(texts), f"{where}.content")
    raise _bad_type(f"{where}.content", "a string or an array of text parts", content)
