#!/usr/bin/env python3
"""Write tests/data/chat/templates.json and tests/data/chat/expected.json.

Renders a fixed set of conversations with several published chat templates
through transformers' own machinery (transformers.utils.chat_template_utils.
render_jinja_template: the ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks, loopcontrols, its tojson / raise_exception / strftime_now /
namespace globals), exactly what tokenizer.apply_chat_template(...,
tokenize=False) runs. tests/test_chat_template.c renders the same cases with
qrun's interpreter and compares byte for byte.

strftime_now is pinned to FIXED_NOW so the fixtures are reproducible; the C
test passes the same time.

usage: python3 tools/make_chat_fixtures.py [--smollm2 DIR] [--out tests/data/chat]
"""
import argparse
import datetime as _dt
import json
import os
import sys

from transformers.utils import chat_template_utils as ctu

FIXED_NOW = _dt.datetime(2024, 7, 26, 13, 5, 9)  # a Friday


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ---------------------------------------------------------------- templates
# Public chat template strings from the models' tokenizer_config.json files
# (transcribed; the "source" field names the checkpoint each comes from).

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

MISTRAL_V03 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content']|trim + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

FALCON180 = (
    "{% for message in messages %}{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' }}{% elif message['role'] == 'user' %}{{ 'User: ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Falcon: ' }}{% endif %}{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n' + 'Falcon:' }}{% endif %}"
)

QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25 = """{%- if tools %}
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
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Not a model's: written for qrun's tests to cover the rest of the subset.
FEATURES = """{#- every construct qrun claims to support, rendered by Jinja for comparison -#}
{%- macro turn(role, text, sep='\\n') -%}
<{{ role | upper }}>{{ sep }}{{ text }}
{%- endmacro -%}
{%- set ns = namespace(n_user=0, last_user='', sys=none) -%}
{%- for m in messages -%}
  {%- if m.role == 'user' %}{% set ns.n_user = ns.n_user + 1 %}{% set ns.last_user = m.content %}{% endif -%}
  {%- if m['role'] == 'system' and ns.sys is none %}{% set ns.sys = m.content %}{% endif -%}
{%- endfor -%}
[{{ messages | length }} msgs, {{ ns.n_user }} user, first={{ (messages | first).role if messages else 'none' }}]
{% for m in messages if m.content is not none -%}
  {{ loop.index }}/{{ loop.length }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}:
  {{- turn(m.role, m.content | trim, sep=': ') }}
  {%- if loop.previtem is defined %} prev={{ loop.previtem.role }}{% endif %}
{% else -%}
(no messages with content)
{% endfor -%}
{%- set words = ns.last_user.split() -%}
words={{ words | length }} join={{ words[:3] | join('+') }} rev={{ words[::-1][:2] }}
{% set d = {'b': 1, 'a': [1, 2.5, none, true], 'c': "q\\"uote"} -%}
json={{ d | tojson }} sorted={{ d | tojson(sort_keys=true) }}
{{ d.items() | list }} {{ d.get('zz', 'dflt') }} {{ d['a'][1] * 2 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 / 4 }}
{{ 'abc' ~ 1 ~ none }} {{ 'x' if ns.sys else 'y' }} {{ ns.sys | default('nosys', true) }} {{ undefined_var | default('u') }}
{{ 'Hello World'.lower().replace('world', 'there').title() }} {{ '  pad  '.strip() }}|{{ '--x--'.strip('-') }}|{{ 'a,b,,c'.split(',') }}
{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'ell' in 'hello' }} {{ 3 not in [1, 2] }} {{ 1 < 2 < 3 }}
{% for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %} {% for i in range(10) %}{% if i > 2 %}{% break %}{% endif %}{{ i }}{% endfor %}
{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %} {{ [3, 1, 2] | reverse | list }} {{ 'abc' | list }}
{% set block_var %}captured {{ ns.n_user }}{% endset %}{{ block_var | upper }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | map(attribute='role') | join(',') }}
{%- if add_generation_prompt %}
{{ turn('assistant', '') }}
{%- endif %}
{% raw %}{{ not a tag }}{% endraw %} {{ strftime_now('%Y-%m-%d %H:%M') }} {{ 12 is divisibleby 4 }} {{ 'ABC' is upper }} {{ none is none }} {{ {} is mapping }}
"""

TEMPLATES = [
    ("smollm2", None, "HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json (read from models-cache)",
     None, None),  # bos/eos filled from the file
    ("llama2-chat", LLAMA2, "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json", "<s>", "</s>"),
    ("llama3-instruct", LLAMA3, "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json",
     "<|begin_of_text|>", "<|eot_id|>"),
    ("llama3.1-instruct", LLAMA31, "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json, with the "
     "strftime_now date of Llama-3.2-Instruct", "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral-instruct-v0.1", MISTRAL_V01, "mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json", "<s>", "</s>"),
    ("mistral-instruct-v0.3", MISTRAL_V03, "mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json (no-tools form)",
     "<s>", "</s>"),
    ("zephyr", ZEPHYR, "HuggingFaceH4/zephyr-7b-beta and TinyLlama/TinyLlama-1.1B-Chat-v1.0 tokenizer_config.json",
     "<s>", "</s>"),
    ("falcon-180b-chat", FALCON180, "tiiuae/falcon-180B-chat tokenizer_config.json", None, "<|endoftext|>"),
    ("qwen2-chatml", QWEN2, "Qwen/Qwen2-7B-Instruct tokenizer_config.json", None, "<|im_end|>"),
    ("qwen2.5-instruct", QWEN25, "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json", None, "<|im_end|>"),
    ("gemma-it", GEMMA, "google/gemma-7b-it tokenizer_config.json", "<bos>", "<eos>"),
    ("qrun-features", FEATURES, "written for qrun's tests (not a model's); covers the rest of the subset",
     "<s>", "</s>"),
]

TRICKY = ("Line one\nline two\n\n  indented 'single' and \"double\" quotes, a back\\slash, "
          "tab\there, unicode: caf\u00e9 \u65e5\u672c\u8a9e \U0001F600, "
          "{{ not a tag }} {% neither %}  \n")

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "user_only": [{"role": "user", "content": "Hello!"}],
    "multi_turn": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Name a colour.  "},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, please"},
    ],
    "tricky_content": [
        {"role": "system", "content": "S\u00f8stem: \"quoted\"\n"},
        {"role": "user", "content": TRICKY},
        {"role": "assistant", "content": "  A reply with trailing spaces   "},
        {"role": "user", "content": "\u00bfOk? \u2014 \u00e0 bient\u00f4t"},
    ],
    "wrong_order": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ],
    "null_content": [
        {"role": "user", "content": "call a tool"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "and now?"},
    ],
    "empty": [],
}


# Single-feature templates (expressions, filters, tests, statements, whitespace
# control), rendered with UNIT_MESSAGES, bos/eos "<s>"/"</s>", name="World",
# add_generation_prompt=True; one line of UNITS is one case.
UNIT_MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "Yo"}]
UNITS = r'''
{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 7 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 2 ** 3 ** 2 }}|{{ 1.5 + 1 }}|{{ 10 / 5 }}
{{ 'a' + 'b' }}|{{ 'a' ~ 1 ~ 2.5 ~ none ~ true }}|{{ 'ab' * 3 }}|{{ [1] * 3 }}|{{ [1, 2] + [3] }}|{{ -(3) }}|{{ +4 }}
{{ 1 == 1.0 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 != 2 }}|{{ 2 >= 2 > 1 }}|{{ none == none }}|{{ true == 1 }}
{{ true and 'x' }}|{{ false or 'y' }}|{{ none or 0 }}|{{ not none }}|{{ 'x' if true else 'y' }}|{{ 'x' if false }}|{{ 'x' if false else 'y' if true else 'z' }}
{{ 'b' in 'abc' }}|{{ 2 in [1, 2] }}|{{ 'k' in {'k': 1} }}|{{ 'z' not in 'abc' }}|{{ 'x' in undefined_thing }}
{{ messages[0].role }}|{{ messages[-1]['content'] }}|{{ messages[1:] | length }}|{{ messages[5] is defined }}|{{ messages.0.content }}|{{ messages[0].nope is defined }}
{{ 'hello'[1:3] }}|{{ 'hello'[::-1] }}|{{ 'hello'[-2:] }}|{{ [1,2,3,4,5][1::2] }}|{{ 'héllo'[1] }}|{{ 'héllo' | length }}|{{ 'héllo'[:2] }}
{{ '  x  ' | trim }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'hello world' | capitalize }}|{{ 'hello world' | title }}|{{ none | string }}|{{ 3 | string }}
{{ undefined_x | default('d') }}|{{ '' | default('e') }}|{{ '' | default('e', true) }}|{{ none | default('n') }}|{{ undefined_x is defined }}|{{ undefined_x is undefined }}
{{ [1, 'a', none] | join('-') }}|{{ ['x', 'y'] | join }}|{{ messages | map(attribute='role') | join(', ') }}|{{ [1, 2, 3] | first }}|{{ [1, 2, 3] | last }}|{{ 'abc' | first }}
{{ 'a-b-a' | replace('a', 'X') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'ab' | replace('', '.') }}|{{ [3, 1] | list }}|{{ 'ab' | list }}|{{ {'a': 1} | list }}
{{ {'a': 1, 'b': [1, 2.0, none, true, 'é"\n']} | tojson }}|{{ [1, {'x': 'y'}] | tojson(indent=2) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ 'é' | tojson(ensure_ascii=true) }}
{{ {'a': 1}.items() | list }}|{{ {'a': 1} | items | list }}|{{ {'a': 1, 'b': 2}.keys() | list }}|{{ {'a': 1}.values() | list }}|{{ {'a': 1}.get('a') }}|{{ {'a': 1}.get('b', 'def') }}|{{ {'a': 1}.get('b') }}
{{ ' x '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}|{{ 'a b  c'.split() }}|{{ 'a,b'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ 'Hi'.upper() }}|{{ 'Hi'.lower() }}
{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith('bc') }}|{{ 'abc'.startswith(('x', 'a')) }}|{{ 'abc'.find('c') }}|{{ 'a,b'.replace(',', ';') }}|{{ ', '.join(['a', 'b']) }}|{{ 'hello world'.title() }}
{{ 1 is number }}|{{ 1.5 is float }}|{{ 1 is integer }}|{{ 'x' is string }}|{{ {} is mapping }}|{{ [] is sequence }}|{{ none is none }}|{{ 3 is odd }}|{{ 4 is even }}|{{ 9 is divisibleby 3 }}|{{ 'a' is eq 'a' }}|{{ true is boolean }}|{{ 1 is not string }}
{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}{% endfor %}
{% for m in messages if m.role != 'system' %}{{ m.role }}{{ loop.index }}/{{ loop.length }} {% endfor %}|{% for x in [] %}a{% else %}empty{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}
{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}|{% set ns = namespace(t=0) %}{% for i in [1, 2, 3] %}{% set ns.t = ns.t + i %}{% endfor %}{{ ns.t }}|{% set a, b = 1, 2 %}{{ a }}{{ b }}
{% if false %}a{% elif none %}b{% elif 1 %}c{% else %}d{% endif %}|{% if messages %}has{% endif %}|{% if not [] %}empty{% endif %}
{% macro greet(who, punct='!') %}Hello {{ who }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', who='C') }}
{% set blk %}  captured {{ 1 + 1 }}  {% endset %}[{{ blk }}]|{% set t2 | trim %}  trimmed  {% endset %}[{{ t2 }}]|{% filter upper %}up {{ 'x' }}{% endfilter %}
{%- for i in range(5) -%}{%- if i == 3 -%}{%- break -%}{%- endif -%}{{ i }}{%- endfor %}|{% for i in range(1, 10, 3) %}{{ i }}{% endfor %}|{% for i in range(3, 0, -1) %}{{ i }}{% endfor %}
{{ [1, 2, 3] | selectattr('real') | list if false else 'skip' }}|{{ [0, 1, 2, none] | select | list }}|{{ [1, 2, 3, 4] | reject('odd') | list }}|{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | first }}
{{ "it's" }}|{{ 'say "hi"' }}|{{ 'tab\there' }}|{{ 'nl\\n' }}|{{ '\x41\u00e9\U0001F600' }}|{{ 'a' 'b' }}|{{ ['it\'s', "a\"b"] }}|{{ {'k': 'v'} }}|{{ (1,) }}|{{ (1, 'a') }}
{{ 1e3 }}|{{ 0.1 + 0.2 }}|{{ 1e16 }}|{{ 1.5e-7 }}|{{ 100.0 }}|{{ 2.5 | int }}|{{ '42' | int }}|{{ 'x' | int }}|{{ '3.5' | float }}|{{ -3 | abs }}|{{ 2.567 | round(1) }}|{{ 1_000 }}
{{ name }}|{{ bos_token }}{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|{{ documents is none }}|{{ 'x' | e }}|{{ '<&>' | escape }}|{{ "a\nb" | indent(2) }}|{{ "a\nb" | indent(2, true) }}
{{ [1, 2, 1, 3] | unique | list }}|{{ [1, 2] | reverse | list }}|{{ 'abc' | reverse }}|{{ messages | length }}|{{ 'abc' | count }}|{{ {'a': 1} | length }}|{{ dict(a=1, b='x') }}|{{ namespace(a=1).a }}
'''.strip('\n').split('\n')
WS = [
 "a\n  {% if true %}\n  b\n  {% endif %}\nc",
 "a {%- if true -%} b {%- endif -%} c",
 "a  {{- 'x' -}}  b",
 "  {%+ if true %}x{% endif %}",
 "{% if true +%}\nx{% endif %}",
 "line\n  {# comment #}\nnext",
 "a {#- c -#} b",
 "{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n",
 "x\n\n",
 "a\r\nb\rc\r\n",
 "  {{ 'var' }}  \n  {% if 1 %}y{% endif %}",
 "{% raw %}  {{ x }} {% if %}{% endraw %}",
 "text}}more{%",
 "{{ '{{' }}{{ '}}' }}",
 "{{ {'a': {'b': 1}} }}",
 "  \t{% set x = 1 %}\n{{ x }}",
 "{%- set x = 1 -%}\n\n{{ x }}",
 "a\n{% if true %}   \n{% endif %}b",
]


def render(template, messages, agp, bos, eos):
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    try:
        out, _ = ctu.render_jinja_template(conversations=[messages], chat_template=template,
                                           add_generation_prompt=agp, **kwargs)
        return {"output": out[0]}
    except Exception as e:  # noqa: BLE001 - the fixture records whatever Jinja raised
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", default=os.path.join(ROOT, "models-cache", "smollm2-135m-instruct"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "chat"))
    args = ap.parse_args()

    ctu.datetime = _FixedDatetime  # strftime_now reads this module's datetime.now()

    with open(os.path.join(args.smollm2, "tokenizer_config.json"), encoding="utf-8") as f:
        smol = json.load(f)

    templates = []
    for name, tpl, source, bos, eos in TEMPLATES:
        if name == "smollm2":
            tpl, bos, eos = smol["chat_template"], smol.get("bos_token"), smol.get("eos_token")
        templates.append({"name": name, "comment": "source: " + source, "template": tpl,
                          "bos_token": bos, "eos_token": eos})

    cases = []
    for t in templates:
        for cname, msgs in CONVERSATIONS.items():
            for agp in (False, True):
                r = render(t["template"], msgs, agp, t["bos_token"], t["eos_token"])
                case = {"template": t["name"], "conversation": cname, "add_generation_prompt": agp}
                case.update(r)
                cases.append(case)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "templates.json"), "w", encoding="utf-8") as f:
        json.dump({"comment": "Chat templates for tests/test_chat_template.c; regenerate with "
                              "tools/make_chat_fixtures.py",
                   "fixed_now": FIXED_NOW.strftime("%Y-%m-%dT%H:%M:%S"),
                   "templates": templates, "conversations": CONVERSATIONS}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"comment": "Outputs of transformers' render_jinja_template for each template x conversation x "
                              "add_generation_prompt; regenerate with tools/make_chat_fixtures.py",
                   "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    units = []
    for t in UNITS + WS:
        try:
            out, _ = ctu.render_jinja_template(conversations=[UNIT_MESSAGES], chat_template=t,
                                               add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
                                               name="World")
            units.append({"template": t, "output": out[0]})
        except Exception as e:  # noqa: BLE001
            units.append({"template": t, "error": {"type": type(e).__name__, "message": str(e)}})
    with open(os.path.join(args.out, "units.json"), "w", encoding="utf-8") as f:
        json.dump({"comment": "Single-feature templates and Jinja's output for them; regenerate with "
                              "tools/make_chat_fixtures.py",
                   "messages": UNIT_MESSAGES, "cases": units}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in cases if "error" in c)
    print(f"{len(templates)} templates, {len(cases)} cases ({n_err} expected errors), {len(units)} unit cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
