"""Chat messages -> one prompt string, the way transformers' apply_chat_template does.

A model's ``tokenizer_config.json`` may carry a Jinja2 ``chat_template``; Hugging Face
renders it in a sandboxed environment with ``trim_blocks`` and ``lstrip_blocks``, the
globals ``raise_exception`` and ``strftime_now``, a ``tojson`` filter that keeps non-ASCII
text as is, the ``loopcontrols`` extension and a ``{% generation %}`` block tag (used to
mark assistant tokens for training; rendering just emits its body).  ``render_chat``
reproduces that, so a prompt rendered here tokenizes exactly as under transformers.

Models without a template (GPT-2) get ``PLAIN_TEXT_TEMPLATE``, a documented plain-text
transcript::

    <system content>\\n\\n            (each system or developer message)
    User: <content>\\n                 (each user message; "Assistant:", "Tool:" likewise)
    Assistant:                        (when add_generation_prompt)

so "Hello" becomes ``"User: Hello\\nAssistant:"`` and the model writes the reply after
the colon.  Base models keep going with a new "User:" turn: pass ``stop=["\\nUser:"]``.

The sandbox keeps a template from reaching Python internals; templates come with the
model (pinned by the manifest), messages from the user, and neither can run code.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cmlp.errors import ChatTemplateError

PLAIN_TEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ('system', 'developer') %}"
    "{{ message['content'] + '\\n\\n' }}"
    "{% else %}"
    "{{ (message['role'] | capitalize) + ': ' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser) -> list[nodes.Node]:
        next(parser.stream)  # the "generation" token
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters and sorts keys; chat templates
    # expect plain json.dumps output with Unicode kept.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def compile_template(source: str | None) -> jinja2.Template:
    """Compile (and cache) a chat template; None means PLAIN_TEXT_TEMPLATE.

    Raises ChatTemplateError on a syntax error, so a server can refuse to start.
    """
    try:
        return _environment().from_string(PLAIN_TEXT_TEMPLATE if source is None else source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from None


def render_chat(
    messages,
    template: str | None,
    *,
    bos_token: str | None,
    eos_token: str | None,
    add_generation_prompt: bool = True,
    **extra,
) -> str:
    """Render ``messages`` (a list of {"role", "content", ...} dicts) with ``template``.

    ``extra`` goes to the template as further variables (``tools``, ``documents``, ...),
    as apply_chat_template's keyword arguments do.  A template that rejects the
    conversation (``raise_exception``) or fails while rendering raises ChatTemplateError.
    """
    compiled = compile_template(template)
    extra.setdefault("tools", None)  # transformers always defines these two
    extra.setdefault("documents", None)
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except jinja2.TemplateError as exc:  # includes raise_exception and sandbox violations
        raise ChatTemplateError(f"chat template rejected the messages: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # e.g. "+" on a None content: the template's own assumption about the messages
        raise ChatTemplateError(f"chat template failed on these messages: {exc}") from None
