"""The transcript (centre): one `MessageView` per message, answers streamed as Markdown."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Label, Static

from tui.store import StoredMessage, StoredRoute
from tui.store_parts import AnswerParts
from tui.widgets.streamed import StreamedMarkdown
from tui.widgets.thinking import ThinkingBlock
from tui.widgets.toolcard import ToolCallCard

__all__ = ["MessageView", "Transcript", "badge_text", "side_name"]

STATUS_LINES = {
    "cancelled": "⏹ cancelled — partial answer kept",
    "incomplete": "⚠ incomplete — the app stopped while this answer streamed",
}


def side_name(backend: str) -> str:
    """'device' for the local engine, the backend's own name otherwise."""
    return "device" if backend == "local" else backend


def badge_text(route: StoredRoute) -> str:
    """One line: where (and which adapter), why, how fast, how many tokens."""
    where = side_name(route.backend) + (f" · {route.adapter}" if route.adapter else "")
    parts = [where]
    if route.reason:
        parts.append(route.reason)
    if route.ttft_s is not None:
        parts.append(f"ttft {route.ttft_s * 1000:.0f} ms")
    if route.decode_tokens_per_s is not None:
        parts.append(f"{route.decode_tokens_per_s:.1f} tok/s")
    parts.append(f"{route.prompt_tokens} → {route.completion_tokens} tokens")
    return "  ·  ".join(parts)


class MessageView(Vertical):
    """One message: a role line, the body (Markdown for answers), the badge and notes."""

    @dataclass
    class RouteRequested(Message):
        message_id: int

    def __init__(self, message: StoredMessage, parts: AnswerParts | None = None) -> None:
        super().__init__(classes=f"message {message.role}")
        self.message = message
        self.parts = parts or AnswerParts()
        """Its reasoning and tool calls (tui/store_parts.py), shown apart from the text."""
        self._streaming = False

    def compose(self) -> ComposeResult:
        yield Label("You" if self.message.role == "user" else "tandem", classes="role")
        if self.message.role == "assistant":
            if self.parts.reasoning:
                yield ThinkingBlock(self.parts.reasoning, self.parts.thinking_s)
            for call in self.parts.tool_calls:
                # A call stored without a result was never run (no tool answered it).
                yield ToolCallCard(call["id"], call["name"], call["arguments"],
                                   call.get("result", "(not run)"))
            yield StreamedMarkdown(self.message.content, classes="body")
        else:
            yield Static(self.message.content, classes="body", markup=False)
        yield Static("", classes="note", markup=False)
        yield Static("", classes="badge", markup=False)

    def on_mount(self) -> None:
        self._show_meta()

    @property
    def body_text(self) -> str:
        return self.message.content

    def _show_meta(self) -> None:
        msg = self.message
        notes: list[str] = []
        if msg.route and msg.route.failover:
            notes.append("↪ " + msg.route.failover)
        if msg.status in STATUS_LINES:
            notes.append(STATUS_LINES[msg.status])
        if msg.status == "error" and msg.error:
            notes.append("✖ " + msg.error)
        note = self.query_one(".note", Static)
        note.update("\n".join(notes))
        note.display = bool(notes)
        badge = self.query_one(".badge", Static)
        badge.update(badge_text(msg.route) if msg.route else "")
        badge.display = msg.route is not None

    def set_waiting(self, text: str) -> None:
        """Show a status line while the answer has not started (e.g. the model is loading)."""
        note = self.query_one(".note", Static)
        note.update(text)
        note.display = bool(text)

    async def append(self, text: str) -> None:
        """Add streamed text: appended to the Markdown, never re-parsed whole."""
        if not self._streaming:
            if str(self.query_one(".note", Static).render()).startswith("⏳"):
                self.set_waiting("")
            self._streaming = True
            for block in self.query(ThinkingBlock):
                block.done()  # the answer began: the thinking is over
        self.message.content += text
        await self.query_one(StreamedMarkdown).write(text)

    async def append_reasoning(self, text: str) -> None:
        """Streamed reasoning: into the (collapsed) thinking block above the answer."""
        blocks = self.query(ThinkingBlock)
        if not blocks:
            await self.mount(ThinkingBlock(), before=self.query_one(StreamedMarkdown))
            blocks = self.query(ThinkingBlock)
            self.set_waiting("")
        blocks.first().add(text)

    def restart_reasoning(self) -> None:
        """The answer started over on the other side: so does its thinking."""
        for block in self.query(ThinkingBlock):
            block.reset()

    async def add_tool_call(self, call_id: str, name: str, arguments: str) -> None:
        """A call the model made: a card above the answer's text (which follows the result)."""
        for block in self.query(ThinkingBlock):
            block.done()
        card = ToolCallCard(call_id, name, arguments)
        await self.mount(card, before=self.query_one(StreamedMarkdown))  # in call order

    def set_tool_result(self, call_id: str, result: str) -> None:
        for card in self.query(ToolCallCard):
            if card.call_id == call_id:
                card.set_result(result)

    async def finish(self, message: StoredMessage, thinking_s: float | None = None) -> None:
        """The answer ended: flush the stream, make sure the whole text is rendered (no
        dropped last tokens), show the badge."""
        self._streaming = False
        self.message = message
        for block in self.query(ThinkingBlock):
            block.done(thinking_s)
        if message.role == "assistant":
            await self.query_one(StreamedMarkdown).finish(message.content)
        self._show_meta()

    def on_click(self) -> None:
        if self.message.route is not None:
            self.post_message(self.RouteRequested(self.message.id))


class Transcript(VerticalScroll):
    """The conversation's messages, scrolled to the end as answers stream."""

    async def show(
        self, messages: list[StoredMessage], parts: dict[int, AnswerParts] | None = None
    ) -> None:
        parts = parts or {}
        await self.remove_children()
        await self.mount_all([MessageView(m, parts.get(m.id)) for m in messages])
        # Anchored: follows the end as answers stream (a short conversation sits at the
        # bottom, next to the input, as in most chat apps).
        self.anchor()

    async def add(self, message: StoredMessage) -> MessageView:
        """Mount a message at the end and follow the end again (streaming text keeps it in
        view without a scroll per token, until the user scrolls up)."""
        view = MessageView(message)
        await self.mount(view)
        self.anchor()
        return view

    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))

    def last_answer(self) -> MessageView | None:
        answers = [v for v in self.views() if v.message.role == "assistant"]
        return answers[-1] if answers else None

    async def add_notice(self, text: str) -> None:
        """A one-line notice (an error, a hint) that is not part of the conversation."""
        await self.mount(Static(text, classes="notice", markup=False))
        self.anchor()
