"""Chat templates: rendering equals HF transformers' renderer, and hostile templates (Python
internals, module access, endless loops, huge allocations) are refused quickly with one clear error."""

import json
import os
import queue
import re
import threading
import time

import pytest

from npllm.chat import ChatTemplateError, render_chat_template, select_template
from npllm.errors import NpllmError

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# A Llama-3-style template exercising what real templates use: bos_token, namespace, macros,
# raise_exception, tojson, filters, loop variables, whitespace control, trim/lstrip blocks.
RICH_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(system='', turns=0) %}
{%- macro header(role) -%}<|start_header_id|>{{ role }}<|end_header_id|>\n\n{%- endmacro %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- endif %}
{%- if tools is not none %}
{{- header('system') }}Tools: {{ tools | tojson(indent=2) }}<|eot_id|>
{%- endif %}
{%- if ns.system %}{{ header('system') }}{{ ns.system }}<|eot_id|>{% endif %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- header(message['role']) }}{{ message['content'] | trim }}<|eot_id|>
{%- endfor %}
{%- if add_generation_prompt %}{{ header('assistant') }}{% endif %}
[turns={{ ns.turns }} last={{ messages | map(attribute='role') | list | last }} year={{ strftime_now('%Y') }}]
"""

# Templates in the styles of real models' (written for these tests, not copied): what they use
# is what the sandbox must render exactly as HF does.
LLAMA3_STYLE = """{{- bos_token }}
{%- set year = strftime_now("%Y") %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\nYear: " + year + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You have access to the following functions:\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role in ['user', 'system'] or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- elif message.tool_calls %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' + tool_call.arguments | tojson + '}<|eot_id|>' }}
    {%- elif message.role == "tool" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable and message.content is not string %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

# Mistral's templates rebuild a list per message ("filtered = filtered + [message]"): quadratic,
# and legitimate; the budget must let a long chat through.
MISTRAL_STYLE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set kept = [] %}
{%- for message in loop_messages %}
    {%- if message["role"] not in ["tool", "tool_results"] and not message.get("tool_calls") %}
        {%- set kept = kept + [message] %}
    {%- endif %}
{%- endfor %}
{%- for message in kept %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant") }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val | tojson }}
                    {%- endif %}
                    {%- if not loop.last %}{{- ", " }}{%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" }}{%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function | tojson %}
            {{- out[:-1] }}
            {%- if tool_call.id | length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" + eos_token }}{%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"] | trim + eos_token }}
    {%- elif message["role"] == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content | string + ", " }}
        {{- '"call_id": "' + message.tool_call_id[-9:] + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user, assistant and tool roles are supported") }}
    {%- endif %}
{%- endfor %}
"""

GEMMA_STYLE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}
"""

QWEN_STYLE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions.\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools>\\n\\nReturn each call within <tool_call></tool_call> tags.<|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not message.content.startswith('<tool_response>') %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and reasoning %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or messages[loop.index0 - 1].role != "tool" %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# Most of Jinja at once: every builtin filter HF-style templates use, loop variables, macros with
# caller, call/filter/set blocks, recursive loops, tests, '%' and str.format, slices and literals.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "chat_template_features.jinja"),
          encoding="utf-8") as _f:
    FEATURES_TEMPLATE = _f.read()

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "你好 🎉"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "x = {'a': [1, 2]}\n\n"}],
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "abc123XYZ", "type": "function",
                                                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "abc123XYZ", "content": "sunny, 21 C"},
    {"role": "assistant", "content": "<think>\nThe tool said sunny.\n</think>\n\nIt is sunny."},
    {"role": "user", "content": "Thanks!"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
LONG_CONVERSATION = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20}
                     for i in range(2000)]


def _hf_render(template, conv, add_generation_prompt, **kwargs):
    pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[conv], chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


TEMPLATES = {"smollm": SMOLLM_TEMPLATE, "rich": RICH_TEMPLATE, "llama3_style": LLAMA3_STYLE,
             "mistral_style": MISTRAL_STYLE, "gemma_style": GEMMA_STYLE, "qwen_style": QWEN_STYLE,
             "features": FEATURES_TEMPLATE}


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["one", "four"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_hf(template, conv, add_generation_prompt):
    kwargs = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    assert render_chat_template(template, conv, add_generation_prompt, **kwargs) == \
        _hf_render(template, conv, add_generation_prompt, **kwargs)


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("case", ["tools", "long"])
def test_tool_calls_and_long_chats_render_like_hf_or_fail_like_hf(name, case):
    """A tool-calling chat with a system prompt and reasoning (with tools given), and a
    2,000-message chat: the same text as HF, or, where HF's render raises, a ChatTemplateError
    with the same message."""
    from jinja2.exceptions import TemplateError

    conv, kwargs = (TOOL_CONVERSATION, {"tools": TOOLS}) if case == "tools" else (LONG_CONVERSATION, {})
    kwargs.update(bos_token="<s>", eos_token="</s>")
    try:
        want = _hf_render(TEMPLATES[name], conv, True, **kwargs)
    except TemplateError as e:
        with pytest.raises(ChatTemplateError, match=re.escape(str(e))):
            render_chat_template(TEMPLATES[name], conv, True, **kwargs)
        return
    start = time.perf_counter()
    assert render_chat_template(TEMPLATES[name], conv, True, **kwargs) == want
    assert time.perf_counter() - start < 2.0


def test_tools_are_rendered_like_hf():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "str"}}}]
    conv = CONVERSATIONS[0]
    assert render_chat_template(RICH_TEMPLATE, conv, True, bos_token="", tools=tools) == \
        _hf_render(RICH_TEMPLATE, conv, True, bos_token="", tools=tools)


def test_raise_exception_becomes_a_chat_template_error():
    bad = [{"role": "assistant", "content": "I speak first"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate") as e:
        render_chat_template(RICH_TEMPLATE, bad, bos_token="")
    assert isinstance(e.value, ValueError) and isinstance(e.value, NpllmError)


def test_long_legitimate_conversation_is_not_refused():
    conv = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(2000)]
    text = render_chat_template(SMOLLM_TEMPLATE, conv)
    assert text.count("<|im_start|>") == 2002  # default system + 2000 + generation prompt


def test_budget_charges_each_loop_its_own_body():
    """A long literal in one small loop must not make every iteration of another loop expensive."""
    template = ("{% macro big() %}" + "M" * 5000 + "{% endmacro %}{{ big() }}"
                "{% for t in tools %}" + "T" * 5000 + "{% endfor %}"
                "{% for m in messages %}{{ m.content.strip() | upper }};{% endfor %}")
    conv = [{"role": "user", "content": f" m{i} "} for i in range(5000)]
    text = render_chat_template(template, conv, tools=[{"name": "x"}])
    assert text.endswith("M4999;") and len(text) == 10000 + sum(len(f"M{i};") for i in range(5000))


def test_named_templates_from_tokenizer_config():
    templates = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    assert select_template(templates) == "D" and select_template(templates, "tool_use") == "T"
    with pytest.raises(ChatTemplateError, match="rag"):
        select_template(templates, "rag")


@pytest.mark.parametrize("messages", [
    "hi", [{"content": "no role"}], [["user", "hi"]], [{"role": "user", "content": object()}],
])
def test_bad_messages_are_refused(messages):
    with pytest.raises(ChatTemplateError, match="messages"):
        render_chat_template(SMOLLM_TEMPLATE, messages)


def test_syntax_error_is_reported_with_line():
    with pytest.raises(ChatTemplateError, match="syntax error at line 2"):
        render_chat_template("ok\n{% for %}", CONVERSATIONS[0])


# ------------------------------------------------------------------ hostile
ATTACKS = {
    "class_mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "attr_filter_class": "{{ messages | attr('__class__') }}",
    "function_globals": "{{ raise_exception.__globals__ }}",
    "cycler_globals_os": "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "namespace_module": "{{ namespace.__module__ }}",
    "self_internals": "{{ self.__init__ }}",
    "namespace_dunder_store": "{% set ns = namespace(__class__=1) %}",
    "mutate_list": "{{ messages.append(1) }}",
    "format_internals": "{{ '{0.__class__}'.format(messages) }}",
    "huge_range": "{% for i in range(10**9) %}{% endfor %}",
    "nested_loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "nested_string_loops": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "recursive_macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive_loop": "{% for m in [[1]] recursive %}{{ loop([m]) }}{% endfor %}",
    "string_repeat": "{{ 'x' * 10**9 }}",
    "list_repeat": "{{ ([0] * 10**9) | length }}",
    "int_power": "{{ 2 ** 10000000 }}",
    "repeated_squaring": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "doubling_concat": "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling_plus": "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "center_filter": "{{ 'x' | center(10**9) }}",
    "ljust_method": "{{ 'x'.ljust(10**9) }}",
    "percent_width": "{{ '%0999999999d' % 1 }}",
    "format_width": "{{ '{:999999999}'.format(1) }}",
    "replace_blowup": "{{ ('a' * 100000) | replace('a', 'b' * 1000) }}",
    "join_blowup": "{{ (range(99999) | list) | join('x' * 100000) }}",
    "tojson_indent": "{{ messages | tojson(indent=10**9) }}",
    "to_bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "buffered_set_block": "{% set big = 'x' * 1000000 %}{% set y %}{% for i in range(99999) %}{{ big }}{% endfor %}{% endset %}",
    "buffered_literals": "{% set y %}{% for i in range(99999) %}{% for j in range(99999) %}" + "L" * 1000
                         + "{% endfor %}{% endfor %}{% endset %}",
    # Python internals and modules reached through the globals the environment provides
    "globals_to_module": "{{ raise_exception.__globals__['json'].dumps(1) }}",
    "attr_filter_globals": "{{ raise_exception | attr('__globals__') }}",
    "class_attribute": "{{ cycler.reset }}",
    "class_mro_call": "{{ namespace.mro() }}",
    "class_init_globals": "{{ joiner.__init__.__globals__ }}",
    "bound_method_self": "{{ range.__self__.globals }}",
    "generator_frame": "{{ (messages | map('upper')).gi_frame }}",
    "map_attribute_class": "{{ messages | map(attribute='__class__') | list }}",
    "sort_attribute_chain": "{{ messages | sort(attribute='__class__.__init__.__globals__') | list }}",
    "import_module": "{% import 'os' as os %}{{ os.system('id') }}",
    "from_import": "{% from 'os' import system %}{{ system('id') }}",
    "include": "{% include '/etc/passwd' %}",
    # endless loops whose bodies are calls (each iteration is slow in Jinja)
    "nested_loop_calls": "{% for i in range(99999) %}{% for j in range(99999) %}{{ loop.cycle('a', 'b') }}"
                         "{% endfor %}{% endfor %}",
    "macro_loop_in_loop": "{% macro f() %}{% for i in range(99999) %}{% endfor %}{% endmacro %}"
                          "{% for i in range(99999) %}{{ f() }}{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hostile_template_is_refused_quickly(name):
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError) as e:
        render_chat_template(ATTACKS[name], CONVERSATIONS[0])
    assert time.perf_counter() - start < 10
    assert isinstance(e.value, ValueError)


def test_module_attributes_are_refused_even_if_a_module_gets_in():
    """The environment's attribute rule refuses modules (defence in depth: render_chat_template
    already refuses any value that is not plain data)."""
    import os

    from jinja2.exceptions import SecurityError

    from npllm import chat

    env = chat._ChatEnvironment(chat._Budget())
    with pytest.raises(SecurityError, match="module"):
        env.from_string("{{ m.path }}").render(m=os)
    with pytest.raises(ChatTemplateError, match="module"):
        render_chat_template("{{ m }}", CONVERSATIONS[0], m=os)


def test_render_time_is_bounded(monkeypatch):
    """Besides the step budget, a render stops after MAX_SECONDS of wall-clock time."""
    from npllm import chat

    monkeypatch.setattr(chat, "MAX_SECONDS", 0.0)
    with pytest.raises(ChatTemplateError, match="took more than"):
        render_chat_template("{% for i in range(5000) %}{{ i ~ 'x' }}{% endfor %}", CONVERSATIONS[0])


@pytest.mark.parametrize("template", ["{% include 'x' %}", "{% import 'os' as os %}", "{% extends 'base' %}",
                                      "{% from 'os' import system %}"])
def test_other_templates_cannot_be_loaded(template):
    with pytest.raises(ChatTemplateError, match="may not include, import or extend"):
        render_chat_template(template, CONVERSATIONS[0])


# ---------------------------------------------------- allocation and time bombs
# Each must be refused (a ChatTemplateError, by a guard: not by running out of memory) within
# BOMB_SECONDS, and its render may raise the process's peak RSS by at most BOMB_MEMORY.  They run
# in a worker subprocess (tests/_fuzz_worker.py, its address space capped at 3 GiB) so that a bomb
# that gets through fails its own case instead of the test run (or the machine).
BOMB_SECONDS = 2.0
BOMB_MEMORY = 64 << 20
_L1000 = "L" * 1000
BOMBS = {
    # sum: Python's sum() adds lists pairwise, copying the partial sum each time
    "sum_quadratic": "{{ ([[1] * 1000] * 5000) | sum(start=[]) }}",
    "sum_in_a_loop": "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}"
                     "{% set ns.x = ns.x + (([[1] * 1000] * 5) | sum(start=[])) %}{% endfor %}",
    "sum_of_sums": "{{ ([[[0] * 100] * 100] * 100) | sum(start=[]) | sum(start=[]) | length }}",
    # '*' and literals: shared references make a value far larger than the memory it takes
    "string_times_huge": "{{ 'x' * 10**10 }}",
    "bytes_times_huge": "{{ 'x'.encode() * 10**9 }}",
    "list_of_lists_of_lists": "{% set a = [0] * 1000 %}{% set b = [a] * 1000 %}{% set c = [b] * 1000 %}{{ c | length }}",
    "int_times_list": "{{ (10**6) * ([0] * 1000) }}",
    "doubling_list": "{% set ns = namespace(x=[0]) %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "nested_pairs": "{% set ns = namespace(x=[1]) %}{% for i in range(60) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}"
                    "{{ ns.x | length }}",
    "compare_nested_pairs": "{% set ns = namespace(x=[1], y=[1]) %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}"
                            "{% set ns.y = [ns.y, ns.y] %}{% endfor %}{{ ns.x == ns.y }}",
    "hash_deep_tuple": "{% set ns = namespace(t=()) %}{% for i in range(100000) %}{% set ns.t = (ns.t,) %}{% endfor %}"
                       "{{ ns.t in [1] }}{{ {ns.t: 1} }}",
    "messages_times_huge": "{% for m in messages * 100000000 %}{% endfor %}",
    # str.format, '%' and the format filter: widths and precisions allocate first
    "format_nested_width": "{{ '{:>{w}}'.format('a', w=6000000000) }}",
    "format_float_width": "{{ '{:>{w}}'.format('a', w=6e9) }}",
    "format_precision": "{{ '{:.999999999f}'.format(1.0) }}",
    "format_map_width": "{{ '{x:>{w}}'.format_map({'x': 'a', 'w': 10**9}) }}",
    "format_many_fields": "{{ ('{0:>999999}' * 100).format('x') }}",
    "format_field_repeat": "{{ ('{0}' * 100000).format('x' * 10000) }}",
    "percent_precision": "{{ '%.999999999f' % 1.0 }}",
    "percent_star_width": "{{ '%*d' % (10**9, 1) }}",
    "percent_of_nested": "{{ '%s' % ([['x' * 10000] * 100] * 50,) }}",
    "format_filter_width": "{{ '%999999999s' | format('x') }}",
    # join and str(): text of shared references
    "join_huge_separator": "{{ (range(99999) | list) | join('x' * 100000) }}",
    "join_shared_strings": "{{ (['x' * 100000] * 1000) | join }}",
    "join_generated_items": "{{ range(100000) | map('string') | map('center', 1000) | join }}",
    "str_join_method": "{{ ''.join(['x' * 100000] * 100) }}",
    "string_of_nested": "{% set a = ['x' * 10000] * 100 %}{% set b = [a] * 100 %}{{ b | string | length }}",
    "print_nested": "{% set a = ['x' * 10000] * 100 %}{% set b = [a] * 100 %}{{ b }}",
    "concat_nested": "{% set a = ['x' * 10000] * 100 %}{{ ([a] * 100) ~ '' }}",
    "tojson_shared_value": "{{ dict.fromkeys(range(100000) | list, 'x' * 1000000) | tojson }}",
    "tojson_nested": "{{ ([['x' * 10000] * 100] * 100) | tojson }}",
    # within the size limits, but their text is far larger: repr() spells a NUL as '\x00', JSON as '\u0000'
    "print_escapes": "{% set a = ['\x00' * 1000000] %}{{ a * 7 }}",
    "string_of_escapes": "{% set a = ['\x00' * 1000000] %}{{ (a * 7) | string | length }}",
    "concat_escapes": "{% set a = ['\x00' * 1000000] %}{{ ((a * 7) ~ '') | length }}",
    "tojson_escapes": "{% set a = ['\x00' * 1000000] %}{{ (a * 7) | tojson | length }}",
    "percent_escapes": "{% set a = ['\x00' * 1000000] %}{{ ('%s' % (a * 7,)) | length }}",
    "format_repr_escapes": "{% set a = ['\x00' * 1000000] %}{{ '{!r}'.format(a * 7) | length }}",
    "join_of_lists": "{% set a = [['\x00' * 1000000]] %}{{ (a * 7) | join | length }}",
    # string methods and filters that grow their input
    "indent_by_a_string": "{{ ('a\\n' * 1000000) | indent('x' * 1000) }}",
    "wordwrap_wrapstring": "{{ ('a ' * 500000) | wordwrap(1, wrapstring='x' * 10000) }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(1000) }}",
    "translate_to_long": "{{ ('a' * 1000000).translate({97: 'b' * 1000}) }}",
    "bytes_ljust": "{{ 'x'.encode().ljust(10**9) }}",
    "list_of_chars": "{{ ('\u4e2d' * 1900000) | list | length }}",
    "split_and_keep": "{% set ns = namespace(x=[]) %}{% set s = 'ab ' * 666666 %}"
                      "{% for i in range(100) %}{% set ns.x = ns.x + [s.split()] %}{% endfor %}",
    "urlize_long_text": "{{ ('www.a.com ' * 200000) | urlize }}",
    "title_many_words": "{{ ('ab ' * 600000) | title | length }}",  # a list of every word first
    "striptags_many_tags": "{{ ('<a>x</a>' * 200000) | striptags | length }}",  # quadratic in markupsafe
    "markup_striptags_method": "{{ (('<a>x</a>' * 200000) | safe).striptags() | length }}",
    "slice_into_empty_lists": "{{ [1] | slice(1999999) | list | length }}",
    "sort_unique_big": "{{ ((range(100000) | list) * 20) | sort | unique | list | length }}",
    # loops and recursion that keep what they build, or compare big values per iteration
    "keep_ranges": "{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = ns.x + [range(100000) | list] %}"
                   "{% endfor %}",
    "grow_string_in_namespace": "{% set ns = namespace(s='') %}{% for i in range(100000) %}"
                                "{% set ns.s = ns.s ~ 'x' * 1000 %}{% endfor %}",
    "grow_list_of_new_strings": "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                                "{% set ns.l = ns.l + ['x' * 1000 ~ i] %}{% endfor %}",
    "grow_dict": "{% set ns = namespace(d={}) %}{% for i in range(100000) %}"
                 "{% set ns.d = dict(ns.d, **{('k' ~ i): 'x' * 1000}) %}{% endfor %}",
    "compare_in_a_loop": "{% set a = range(100000) | list %}{% set b = range(100000) | list %}"
                         "{% for i in range(100000) %}{% if a == b %}{% endif %}{% endfor %}",
    "search_in_a_loop": "{% set a = 'x' * 1900000 %}{% for i in range(100000) %}{% if 'y' in a %}{% endif %}{% endfor %}",
    "recursion_holding_strings": "{% macro f(n) %}{% set s = 'x' * 1000000 ~ n %}{% if n < 900 %}{{ f(n + 1) }}"
                                 "{% endif %}{{ s | length }}{% endmacro %}{{ f(0) }}",
    "recursive_loop_holding_strings": "{% for x in [1] recursive %}{% set s = 'x' * 1000000 ~ loop.depth %}"
                                      "{{ loop([1]) }}{{ s | length }}{% endfor %}",
    "caller_recursion": "{% macro m() %}{{ caller() }}{% endmacro %}"
                        "{% macro r(n) %}{% call m() %}{{ r(n + 1) }}{% endcall %}{% endmacro %}{{ r(0) }}",
    "block_recursion": "{% block b %}{{ self.b() }}{% endblock %}",
    "constant_output_in_a_buffer": "{% set y %}{% for i in range(99999) %}{% for j in range(99999) %}{{ '"
                                   + _L1000 + "' }}{% endfor %}{% endfor %}{% endset %}",
    "rebuild_big_string": "{% set s = 'x' * 1999999 %}{% for i in range(100000) %}{% set t = s ~ i %}{% endfor %}",
    # the parser and compiler
    "deep_parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "deep_list_literal": "{{ " + "[" * 5000 + "]" * 5000 + " }}",
    "huge_template": "{{ 1 }}" * 200000,
}


class _TemplateWorker:
    """tests/_fuzz_worker.py as a long-lived subprocess; ``run(spec)`` -> its JSON report, or a
    'crash' / 'hang' report (the worker is then restarted for the next case)."""

    def __init__(self):
        self.proc = None

    def _start(self):
        import subprocess
        import sys

        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]),
                   NPLLM_FUZZ_MEMORY_LIMIT=str(3 << 30))
        self.proc = subprocess.Popen([sys.executable, os.path.join(here, "_fuzz_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=lambda out, q: [q.put(line) for line in out] + [q.put(None)],
                         args=(self.proc.stdout, self.lines), daemon=True).start()
        self.run({"template": "{% for m in messages %}{{ m.content | upper }}{% endfor %}", "name": "warm-up"})

    def run(self, spec: dict, timeout: float = 60.0) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"outcome": "hang", "message": f"no answer within {timeout:.0f} s"}
        if line is None:
            code = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "message": f"the worker died (exit code {code})"}
        return json.loads(line)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # the worker this test started, by its own handle
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def template_worker():
    w = _TemplateWorker()
    yield w
    w.kill()


def test_the_bomb_corpus_is_large_enough():
    assert len(BOMBS) >= 30


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused_quickly_with_little_memory(template_worker, name):
    r = template_worker.run({"template": BOMBS[name], "name": name})
    assert r["outcome"] == "refused", r
    assert "out of memory" not in r["message"], r  # refused by a guard, not by the address-space cap
    assert r["render_seconds"] < BOMB_SECONDS, r
    assert r["peak_growth"] < BOMB_MEMORY, f"peak RSS grew by {r['peak_growth'] >> 20} MB: {r}"


# ------------------------------------------------------------ the defects
def test_a_loop_without_calls_stops_at_the_deadline(monkeypatch):
    """Every iteration looks at the clock, even when its body calls nothing (a loop's steps used
    to be charged up front, so a body of comparisons of big values never looked at the time)."""
    from npllm import chat

    monkeypatch.setattr(chat, "MAX_SECONDS", 0.0)
    with pytest.raises(ChatTemplateError, match="took more than"):
        render_chat_template("{% for i in range(5000) %}{% if i == -1 %}x{% endif %}{% endfor %}", CONVERSATIONS[0])


def test_a_template_error_message_is_one_short_line():
    """The CLI prints errors in one line; the template chooses raise_exception's message."""
    with pytest.raises(ChatTemplateError) as e:
        render_chat_template("{{ raise_exception('first\\nsecond' ~ 'x' * 10000) }}", CONVERSATIONS[0])
    message = str(e.value)
    assert "\n" not in message and len(message) < 600 and "first\\nsecond" in message


@pytest.mark.parametrize("expr", ["[[1, 2], [3]] | sum(start=[])", "[(1,), (2, 3)] | sum(start=())",
                                  "[[1]] | sum(start=[0])", "[] | sum(start=[])", "[1, 2.5] | sum",
                                  "[{'a': [1]}, {'a': [2, 3]}] | sum(attribute='a', start=[])",
                                  "messages | map(attribute='role') | list | sum(start='')"])
def test_sum_gives_what_hf_gives(expr):
    from jinja2.exceptions import TemplateError

    template = "{{ " + expr + " }}"
    try:
        want = _hf_render(template, CONVERSATIONS[1], False)
    except (TemplateError, TypeError):  # sum() of strings
        with pytest.raises(ChatTemplateError, match="TypeError"):
            render_chat_template(template, CONVERSATIONS[1], False)
        return
    assert render_chat_template(template, CONVERSATIONS[1], False) == want


def test_sum_of_many_lists_is_linear():
    """Python's sum() copies the partial list for each item added: 90,000 one-item lists took
    seconds; they are concatenated once."""
    start = time.perf_counter()
    assert render_chat_template("{{ ([[none]] * 90000) | sum(start=[]) | length }}", CONVERSATIONS[0]) == "90000"
    assert time.perf_counter() - start < 1.0


def test_a_long_chat_through_a_list_rebuilding_template_reaches_the_output_limit_first(monkeypatch):
    """MISTRAL_STYLE rebuilds its list of messages once per message (quadratic): a chat of 6,000
    messages (1.6 MB of prompt) renders, as HF renders it; 8,000 stop at the output limit, not
    at the byte budget (the clock is not what this test is about: ~0.2 s here, but under load...)."""
    from npllm import chat

    monkeypatch.setattr(chat, "MAX_SECONDS", 60.0)
    conv = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(8000)]
    assert render_chat_template(MISTRAL_STYLE, conv[:6000], bos_token="<s>", eos_token="</s>") == \
        _hf_render(MISTRAL_STYLE, conv[:6000], True, bos_token="<s>", eos_token="</s>")
    with pytest.raises(ChatTemplateError, match="more than 2000000 characters"):
        render_chat_template(MISTRAL_STYLE, conv, bos_token="<s>", eos_token="</s>")


def test_values_the_template_builds_keep_their_size_through_namespaces_and_macros():
    """A value's size counts what it references each time: a list nested in itself is refused
    whether it grows in a namespace, in a macro's argument or in a loop variable."""
    for template in ("{% set ns = namespace(x=[1]) %}{% for i in range(40) %}{% set ns.x = [ns.x] * 2 %}{% endfor %}",
                     "{% macro f(x, n) %}{% if n %}{{ f([x, x], n - 1) }}{% endif %}{% endmacro %}{{ f([1], 40) }}",
                     "{% for x in [[1]] recursive %}{% if loop.depth < 40 %}{{ loop([[x, x]]) }}{% endif %}{% endfor %}"):
        with pytest.raises(ChatTemplateError, match="bytes"):
            render_chat_template(template, CONVERSATIONS[0])


def test_cli_chat_on_a_gguf_with_a_bomb_template_fails_fast_in_one_line(tmp_path):
    """The issue: ``npllm generate --chat`` on a file whose chat template is the sum() bomb hung
    (about a minute in the old sandbox's render); now one line on stderr, exit 2, in seconds."""
    import subprocess
    import sys

    from _helpers_io import write_tiny_gguf

    path = tmp_path / "bomb.gguf"
    write_tiny_gguf(path, metadata={"tokenizer.chat_template": ("string", BOMBS["sum_quadratic"])})
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "npllm", "generate", "--chat", "--no-progress", "-m", str(path), "-n", "1", "hi"],
                          capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("npllm: error: ") and "chat template refused" in lines[0], lines
    assert elapsed < 30, elapsed
