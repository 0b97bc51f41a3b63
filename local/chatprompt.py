"""A request as the model's own chat template renders it: tools, tool calls and results, the
thinking switch, earlier reasoning and a continued answer.

The template decides everything model-specific: where the tools go, how a call and its result
are written, whether the reasoning of earlier turns is sent again (Qwen3's drops it before
the last question) and what `enable_thinking` does. Messages are handed over in the shape
Hugging Face templates (and vLLM) expect: `tool_calls` with their arguments decoded,
`reasoning_content` on assistant turns, `tool_call_id` on results.
"""

from __future__ import annotations

import json
from typing import Any

from router.protocol import ChatRequest, Message, Tool

__all__ = ["render_prompt", "template_messages", "template_tool"]


def _arguments(text: str) -> Any:
    # Templates write `arguments | tojson`; vLLM decodes them the same way before rendering.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.reasoning:
        out["reasoning_content"] = m.reasoning
    return out


def template_tool(tool: Tool) -> dict[str, Any]:
    """A tool as the template sees it, in the form vLLM hands it over (its FunctionDefinition
    dumped: name, description, parameters, in that order, null when absent), so both engines
    render the same prompt."""
    function = {
        "name": tool.name,
        "description": tool.description or None,
        "parameters": dict(tool.parameters) if tool.parameters else None,
    }
    return {"type": "function", "function": function}


def template_messages(request: ChatRequest) -> list[dict[str, Any]]:
    return [_message(m) for m in request.messages]


def render_prompt(tokenizer: Any, request: ChatRequest) -> str:
    """The prompt text: the template with the generation prompt, then the partial answer."""
    messages = template_messages(request)
    if not getattr(tokenizer, "chat_template", None):  # a base model: a plain transcript
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return text + request.continue_from
    kwargs: dict[str, Any] = {"tokenize": False}
    if request.tools:
        kwargs["tools"] = [template_tool(t) for t in request.tools]
    thinking = getattr(tokenizer, "has_thinking", False)
    if request.think is not None:
        kwargs["enable_thinking"] = request.think
    if request.continue_from and thinking:
        # A thinking model's partial answer goes back as its open last turn, its reasoning
        # where the template writes it, so the model continues after the think block.
        partial = {"role": "assistant", "content": request.continue_from,
                   "reasoning_content": request.continue_reasoning}
        text = tokenizer.apply_chat_template(
            [*messages, partial], continue_final_message=True, **kwargs
        )
        return str(text)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
    return str(text) + request.continue_from
