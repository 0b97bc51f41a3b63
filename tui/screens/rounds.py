"""One round of an answer on screen: the events of one stream, shown in the answer's view as
they arrive and collected for the store. An answer has several rounds when the model calls
tools (the chat runs them and the model goes on)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable

from router.protocol import Final, ReasoningDelta, Routed, StreamEvent, TextDelta, ToolCall
from tui.answering import PartialSaver, PartsCollector
from tui.toolround import AnswerRound
from tui.widgets.transcript import MessageView, side_name

__all__ = ["WAITING", "show_round"]

WAITING = "⏳ waiting for the local model…"


async def show_round(
    stream: AsyncGenerator[StreamEvent, None],
    view: MessageView,
    saver: PartialSaver,
    collected: PartsCollector,
    said: AnswerRound,
    *,
    device_ready: Callable[[], bool],
) -> Final | None:
    """Show one round as it streams (closing the stream however it ends); its Final, or
    None if none came."""
    final: Final | None = None
    async with contextlib.aclosing(stream) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                saver.add(event.text)
                said.text += event.text
                await view.append(event.text)
            elif isinstance(event, ReasoningDelta):
                collected.add_reasoning(event.text)
                said.reasoning += event.text
                await view.append_reasoning(event.text)
            elif isinstance(event, ToolCall):
                collected.add_call(event)
                said.calls.append(event)
                await view.add_tool_call(event.id, event.name, event.arguments)
            elif isinstance(event, Routed):
                # Before the first token: where it goes and why; mid-stream: a failover.
                route = event.route
                if route.restarted:
                    collected.restart()
                    said.restart()
                    view.restart_reasoning()
                if route.failover:
                    view.set_waiting(f"↪ {route.failover}")
                    continue
                waiting = route.backend == "local" and not device_ready()
                view.set_waiting(
                    (f"{WAITING} " if waiting else "")
                    + f"→ {side_name(route.backend)}: {route.reason}"
                )
            elif isinstance(event, Final):
                final = event
    return final
