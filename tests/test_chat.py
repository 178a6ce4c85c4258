"""Chat templates: rendering equals HF transformers' renderer, and hostile templates (Python
internals, module access, endless loops, huge allocations) are refused quickly with one clear error."""

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

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "你好 🎉"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "x = {'a': [1, 2]}\n\n"}],
]


def _hf_render(template, conv, add_generation_prompt, **kwargs):
    pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[conv], chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


@pytest.mark.parametrize("template", [SMOLLM_TEMPLATE, RICH_TEMPLATE], ids=["smollm", "rich"])
@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["one", "four"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_hf(template, conv, add_generation_prompt):
    kwargs = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    assert render_chat_template(template, conv, add_generation_prompt, **kwargs) == \
        _hf_render(template, conv, add_generation_prompt, **kwargs)


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
