"""Tools, tool calls and tool results in the prompt: the Hermes format with our templates, the
checkpoint's own format with its Jinja template."""

from __future__ import annotations

import json

from model_runtime import ChatTurn, ToolCall
from model_runtime.processing.chat_template import CheckpointChatTemplate
from model_runtime.processing.conversation import QWEN_1_5
from model_runtime.processing.tool_prompt import format_call, hermes_turns

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONVERSATION = [
    ChatTurn("user", "Weather in Paris and Rome?"),
    ChatTurn(
        "assistant",
        "",
        (
            ToolCall("get_weather", '{"city": "Paris"}', "call_1"),
            ToolCall("get_weather", '{"city": "Rome"}', "call_2"),
        ),
    ),
    ChatTurn("tool", "sunny", tool_call_id="call_1"),
    ChatTurn("tool", "rain", tool_call_id="call_2"),
]


def test_hermes_prompt_with_chatml():
    text = QWEN_1_5.render(hermes_turns(CONVERSATION, TOOLS, QWEN_1_5.default_system))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in text
    calls = f"{format_call('get_weather', {'city': 'Paris'})}\n{format_call('get_weather', {'city': 'Rome'})}"
    assert f"<|im_start|>assistant\n{calls}<|im_end|>\n" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    # consecutive tool results share one user turn
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in text
    assert text.endswith("<|im_start|>assistant\n")


def test_a_system_turn_keeps_its_text_before_the_tools():
    turns = hermes_turns([ChatTurn("system", "Be brief."), ChatTurn("user", "hi")], TOOLS, "default")
    assert turns[0].role == "system" and turns[0].text.startswith("Be brief.\n\n# Tools")
    assert [t.role for t in turns] == ["system", "user"]


def test_without_tools_the_history_is_still_written_out():
    turns = hermes_turns(CONVERSATION, None, "default")
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert all("# Tools" not in t.text for t in turns)


def test_processor_renders_tools_into_prompt_ids(tiny_model):
    processor = tiny_model.processor
    plain = processor.build_prompt(CONVERSATION[:1], [])
    with_tools = processor.build_prompt(CONVERSATION, [], tools=TOOLS)
    text = tiny_model.tokenizer.decode(with_tools.token_ids)
    assert "<tools>" in text and "<tool_response>\nrain\n</tool_response>" in text
    assert with_tools.num_text_tokens > plain.num_text_tokens


def test_checkpoint_template_gets_tools_and_calls_in_openai_shape(tiny_model):
    source = (
        "{% for t in tools %}[tool {{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}<{{ m.role }}>{% if m.tool_calls %}{% for c in m.tool_calls %}"
        "call {{ c.function.name }} {{ c.function.arguments.city }};{% endfor %}"
        "{% elif m.role == 'tool' %}{{ m.tool_call_id }}={{ m.content }}"
        "{% else %}{{ m.content[0].text }}{% endif %}{% endfor %}<assistant>"
    )
    template = CheckpointChatTemplate("test", source, (), tiny_model.tokenizer)
    text = template.render(CONVERSATION, TOOLS)
    assert text == (
        "[tool get_weather]<user>Weather in Paris and Rome?<assistant>call get_weather Paris;"
        "call get_weather Rome;<tool>call_1=sunny<tool>call_2=rain<assistant>"
    )
