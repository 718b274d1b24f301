"""cmlp.chat_template renders exactly as transformers' apply_chat_template does.

The reference is transformers itself (installed for the tests), on published chat
templates of real model families written out below, and on the plain-text template
cmlp documents for GPT-2.
"""

from __future__ import annotations

import jinja2
import pytest

from cmlp.chat_template import PLAIN_TEXT_TEMPLATE, compile_template, render_chat
from cmlp.errors import ChatTemplateError, InvalidRequestError
from cmlp.tokenizer import DEFAULT_TOKENIZER_PATH

transformers = pytest.importorskip("transformers")

# Qwen2 / Qwen1.5 instruct (ChatML, with the default system prompt)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama 3 instruct
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Mistral 7B instruct v0.1: alternation enforced with raise_exception
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# Zephyr 7B beta: a multi-line template, where trim_blocks / lstrip_blocks matter
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

# Qwen2.5 instruct's tool section (tojson, whitespace control, namespace-free form)
QWEN25_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Features some templates use: generation blocks, loop controls, tojson options, strftime_now
FEATURES = """{{ bos_token }}Today is {{ strftime_now("%d %b %Y") }}.
{% for message in messages %}
{% if message['role'] == 'assistant' %}
{% generation %}A: {{ message['content'] }}{% endgeneration %}

{% else %}
{{ message['role'] | upper }}: {{ message | tojson(indent=2, sort_keys=True) }}
{% endif %}
{% if loop.index >= 3 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}A:{% endif %}"""

TEMPLATES = {
    "qwen2": QWEN2,
    "llama3": LLAMA3,
    "zephyr": ZEPHYR,
    "qwen25": QWEN25_TOOLS,
    "features": FEATURES,
    "plain": PLAIN_TEXT_TEMPLATE,
}
TOKENS = {
    "qwen2": ("<|endoftext|>", "<|im_end|>"),
    "qwen25": ("<|endoftext|>", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "zephyr": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "features": ("<s>", "</s>"),
    "plain": ("<|endoftext|>", "<|endoftext|>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2? \n"}],
    [
        {"role": "user", "content": 'Schreib ein Gedicht über Käse "mit" Anführungszeichen 🧀'},
        {"role": "assistant", "content": "Käse ist gut.\n\nSehr gut."},
        {"role": "user", "content": "Noch eins, mit {{ braces }} and {% tags %}."},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "\n"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "ok", "name": "bob"},
    ],
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city, in °C",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _hf_tokenizer(bos, eos):
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(DEFAULT_TOKENIZER_PATH), bos_token=bos, eos_token=eos
    )


def _hf(template_name, messages, add_generation_prompt, **kw):
    bos, eos = TOKENS[template_name]
    return _hf_tokenizer(bos, eos).apply_chat_template(
        messages,
        chat_template=TEMPLATES.get(template_name, MISTRAL),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **kw,
    )


def _ours(template_name, messages, add_generation_prompt, **kw):
    bos, eos = TOKENS[template_name]
    return render_chat(
        messages,
        TEMPLATES.get(template_name, MISTRAL),
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=add_generation_prompt,
        **kw,
    )


# fast tier: the two edge-case conversations on every template; the full grid is slow
@pytest.mark.fast_cases(
    lambda conversation, add_generation_prompt, **_: (
        conversation in (2, 3) and add_generation_prompt == (conversation == 2)
    )
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_matches_transformers(name, conversation, add_generation_prompt):
    messages = CONVERSATIONS[conversation]
    want = _hf(name, messages, add_generation_prompt)
    got = _ours(name, messages, add_generation_prompt)
    if name == "features":
        # strftime_now reads the clock in both; a midnight between the calls may not matter
        got, want = _undate(got), _undate(want)
    assert got == want


def _undate(text):
    head, sep, rest = text.partition("Today is ")
    assert sep and rest[2] == " " and rest[6] == " ", text
    return head + sep + "DATE" + rest[11:]


def test_tools_match_transformers():
    messages = CONVERSATIONS[1]
    want = _hf("qwen25", messages, True, tools=TOOLS)
    assert _ours("qwen25", messages, True, tools=TOOLS) == want
    assert '"description": "Weather in a city, in °C"' in want  # tojson keeps Unicode


def test_mistral_alternation_and_rejection():
    ok = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert (
        _ours("mistral", ok, False) == _hf("mistral", ok, False) == "<s>[INST] a [/INST]b</s>[INST] c [/INST]"
    )
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError, match="must alternate"):
        _hf("mistral", bad, False)
    with pytest.raises(ChatTemplateError, match="must alternate"):
        _ours("mistral", bad, False)
    assert issubclass(ChatTemplateError, InvalidRequestError)  # -> HTTP 400 in the proxy


def test_plain_text_template_for_gpt2_is_as_documented():
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye"},
    ]
    text = render_chat(messages, None, bos_token=None, eos_token="<|endoftext|>")
    assert text == "You are helpful.\n\nUser: Hello\nAssistant: Hi.\nUser: Bye\nAssistant:"
    assert (
        render_chat(messages[1:2], None, bos_token=None, eos_token=None, add_generation_prompt=False)
        == "User: Hello\n"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}{{ messages }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_refuses_escapes(template):
    with pytest.raises(ChatTemplateError):
        render_chat([{"role": "user", "content": "x"}], template, bos_token=None, eos_token=None)


def test_broken_template_fails_to_compile():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        compile_template("{% for m in messages %}")
    with pytest.raises(ChatTemplateError):
        render_chat(
            [{"role": "user", "content": None}],
            "{{ messages[0]['content'] + 'x' }}",
            bos_token=None,
            eos_token=None,
        )
