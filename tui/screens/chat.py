"""The chat screen: conversation list, transcript, input, status bar, and every chat action.

Answers stream in a worker owned by this screen (one at a time: `exclusive`); Esc cancels it,
which closes the backend stream (freeing its slot) and keeps the partial text, marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker

from router.protocol import Final, ToolCall
from tui.answering import PartialSaver, PartsCollector, build_request, describe_error
from tui.collector import defer_full_collections
from tui.export import export_conversation
from tui.mcp.hub import McpTool
from tui.mcp.permissions import Decision
from tui.paths import paths
from tui.screens.dialogs import Confirm, RouteRecord, SearchDialog, TextPrompt
from tui.screens.rounds import WAITING, show_round
from tui.screens.tools import ToolPermission, ToolServers
from tui.store import Conversation, MessageStatus, Store, StoredMessage
from tui.toolround import MAX_ROUNDS, AnswerRound, continue_with_results, run_tool_calls
from tui.widgets.composer import Composer
from tui.widgets.sidebar import ConversationList
from tui.widgets.status import StatusBar
from tui.widgets.transcript import MessageView, Transcript

if TYPE_CHECKING:
    from tui.session import ChatSession

__all__ = ["BINDINGS", "ChatScreen"]

DEFAULT_TITLE = "New conversation"
CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)

BINDINGS: list[BindingType] = [
    Binding("escape", "cancel", "Cancel answer"),
    Binding("ctrl+r", "regenerate", "Regenerate"),
    Binding("ctrl+o", "regenerate_other", "Regenerate on the other side"),
    Binding("ctrl+l", "edit_last", "Edit & resend"),
    Binding("ctrl+t", "copy_answer", "Copy answer"),
    Binding("ctrl+g", "copy_code", "Copy code block"),
    Binding("ctrl+n", "new_conversation", "New"),
    Binding("f2", "rename", "Rename"),
    Binding("f8", "delete", "Delete"),
    Binding("ctrl+f", "search", "Search"),
    Binding("ctrl+s", "export", "Export"),
    Binding("ctrl+b", "toggle_sidebar", "Sidebar"),
    Binding("f3", "app.settings", "Settings"),
    Binding("f4", "route_record", "Route record"),
    Binding("f5", "system_prompt", "System prompt"),
    Binding("f6", "adapter", "Adapter", priority=True),
    Binding("f7", "toggle_local_only", "Local-only pin", priority=True),
    Binding("f9", "app.switch_model", "Switch model"),
    Binding("f10", "cycle_thinking", "Thinking on/off/default", priority=True),
    Binding("f11", "tool_servers", "Tools (MCP)", priority=True),
]


class ChatScreen(Screen[None]):
    """The main screen. `conversation` is the one shown. It calls down only: into the `store`
    and the `session` it is given (which owns the backend), and posts what the app should
    know as messages."""

    BINDINGS = BINDINGS

    @dataclass
    class AnswerFailed(Message):
        """An answer ended with `error` (already shown in the transcript)."""

        error: BaseException

    def __init__(self, store: Store, session: ChatSession) -> None:
        super().__init__()
        self.store = store
        self.session = session
        self.conversation: Conversation | None = None
        self.answer_worker: Worker[None] | None = None
        self._editing: StoredMessage | None = None
        """The message Ctrl+L put back in the input: sending replaces it (in its own
        conversation only: message ids are global)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield ConversationList(id="sidebar")
            with Vertical(id="chat"):
                yield Transcript(id="transcript")
                yield Composer(id="composer")
        yield StatusBar(id="status")

    async def on_mount(self) -> None:
        store = self.store
        conversations = store.conversations()
        conv = conversations[0] if conversations else store.create_conversation()
        await self.open_conversation(conv.id)
        self.query_one(Composer).focus()
        if store.recovered:
            self.notify(
                f"{store.recovered} answer(s) were cut off when tandem last stopped; "
                "their text so far is kept and marked incomplete.",
                timeout=8,
            )

    # --- conversations ---

    def refresh_sidebar(self) -> None:
        current = self.conversation.id if self.conversation else None
        self.query_one(ConversationList).show(self.store.conversations(), current)

    async def open_conversation(self, conversation_id: str) -> None:
        """Show a conversation (cancels an answer still streaming in the current one)."""
        conv = self.store.conversation(conversation_id)
        if conv is None:
            return
        await self.cancel_answer()
        self._stop_editing()
        self.conversation = conv
        await self.query_one(Transcript).show(self.store.messages(conv.id),
                                              self.store.parts_of(conv.id))
        self.refresh_sidebar()
        self._show_pin()

    def _stop_editing(self) -> None:
        """Forget a Ctrl+L edit (another conversation opens): the next send is a new message,
        and the edited text leaves the input with its conversation."""
        editing, self._editing = self._editing, None
        if editing is not None:
            composer = self.query_one(Composer)
            if composer.text == editing.content:
                composer.text = ""

    @on(ConversationList.Opened)
    async def _opened(self, event: ConversationList.Opened) -> None:
        await self.open_conversation(event.conversation_id)
        self.query_one(Composer).focus()

    def _reload_conversation(self) -> None:
        assert self.conversation is not None
        conv = self.store.conversation(self.conversation.id)
        if conv is not None:
            self.conversation = conv

    def _show_pin(self) -> None:
        pinned = self.conversation is not None and self.conversation.local_only
        self.query_one(StatusBar).pin = "⌂ local-only" if pinned else ""

    # --- sending and streaming ---

    @on(Composer.Submitted)
    async def _submitted(self, event: Composer.Submitted) -> None:
        await self.send(event.text)

    async def send(self, text: str) -> None:
        """Add a user message and start its answer (one answer at a time: while one runs,
        the text stays in the input)."""
        assert self.conversation is not None
        if self.streaming:
            composer = self.query_one(Composer)
            if not composer.text:
                composer.text = text
            self.notify(
                "An answer is still running: wait for it, or press Esc to cancel it.",
                severity="warning",
            )
            return
        store = self.store
        conv = self.conversation
        editing, self._editing = self._editing, None
        if editing is not None and editing.conversation_id == conv.id:
            store.delete_messages_from(conv.id, editing.id)
            await self.query_one(Transcript).show(store.messages(conv.id), store.parts_of(conv.id))
        if conv.title == DEFAULT_TITLE:
            store.update_conversation(conv.id, title=" ".join(text.split())[:48])
            self._reload_conversation()
        message = store.add_message(conv.id, "user", text)
        await self.query_one(Transcript).add(message)
        self.refresh_sidebar()
        self.start_answer()

    def start_answer(self, side: str | None = None) -> None:
        """Stream the answer to the conversation as it stands; `side` pins "local"/"cloud"."""
        self.answer_worker = self._answer(side)

    @work(exclusive=True, group="answer")
    async def _answer(self, side: str | None) -> None:
        session = self.session
        store = self.store
        assert self.conversation is not None
        conv = self.conversation
        history = store.messages(conv.id)
        stored = store.add_message(conv.id, "assistant", "", "streaming")
        view = await self.query_one(Transcript).add(stored)
        saver = PartialSaver(store, stored.id)
        collected = PartsCollector()  # reasoning and tool calls, stored apart from the text
        final: Final | None = None
        status: MessageStatus = "complete"
        error = ""
        resume_collections = defer_full_collections()
        try:
            if not session.ready.is_set():
                view.set_waiting(WAITING)
                await session.built.wait()
                # With a cloud the router may answer there at once; otherwise wait here.
                if not session.may_use_cloud(conv):
                    await session.ready.wait()
            tools = await self._tools_for(conv, view)
            request = build_request(conv, history, max_tokens=session.config.max_tokens,
                                    parts=store.parts_of(conv.id), think=store.thinking(conv.id),
                                    tools=tuple(t.to_tool() for t in tools))
            for round_ in range(MAX_ROUNDS + 1):
                said = AnswerRound()
                final = await show_round(session.stream(conv, request, side), view, saver,
                                         collected, said, device_ready=session.ready.is_set)
                ran_out = round_ == MAX_ROUNDS
                if ran_out or not (request.tools and said.calls and final is not None
                                   and final.finish_reason == "tool_calls"):
                    break
                # The model called tools: run them here (asking first), then let it go on.
                outcomes = await run_tool_calls(said.calls, session.tools,
                                                session.permissions, self._ask_permission)
                for outcome in outcomes:
                    collected.add_result(outcome.call.id, outcome.result)
                    view.set_tool_result(outcome.call.id, outcome.result)
                request = continue_with_results(request, said.text, said.reasoning, outcomes)
            if final is not None and final.finish_reason == "cancelled":
                status = "cancelled"
        except asyncio.CancelledError:
            # Esc, another answer, or the app closing: keep the partial text, marked.
            status = "cancelled"
        except Exception as exc:  # every failure becomes one line; the history stays
            status, error = "error", describe_error(exc)
            self.post_message(self.AnswerFailed(exc))
        try:
            store.finish_message(stored.id, saver.text, status, final=final, error=error)
            parts = collected.parts(final)
            store.save_parts(stored.id, parts)
            finished = store.message(stored.id)
            if finished is not None:
                await view.finish(finished, parts.thinking_s)
            self.query_one(Transcript).scroll_end(animate=False)
        finally:
            # Once the last words are on screen, the collector may take its pause.
            self.call_after_refresh(resume_collections)

    async def _tools_for(self, conv: Conversation, view: MessageView) -> list[McpTool]:
        """The MCP tools this conversation offers (waiting for servers still starting)."""
        session = self.session
        if not session.tools.names:
            return []
        if not session.tools_started.is_set():
            view.set_waiting("⏳ starting MCP servers…")
            await session.tools_started.wait()
            view.set_waiting("")
        servers = session.tool_servers(self.store.tool_servers(conv.id), conv)
        return list(session.tools.tools(servers))

    async def _ask_permission(self, tool: McpTool, call: ToolCall) -> Decision:
        """Ask the user whether this call may run (from the answer's worker)."""
        return await self.app.push_screen_wait(
            ToolPermission(tool.server, tool.remote, call.arguments)
        )

    async def cancel_answer(self) -> None:
        """Stop the answer that is streaming, if any (its partial text is kept, marked)."""
        worker = self.answer_worker
        if worker is not None and worker.is_running:
            worker.cancel()
            with contextlib.suppress(Exception):
                await worker.wait()
        self.answer_worker = None

    @property
    def streaming(self) -> bool:
        return self.answer_worker is not None and self.answer_worker.is_running

    # --- actions ---

    async def action_cancel(self) -> None:
        """Esc: stop the answer streaming now; its text so far is kept and marked."""
        if self.streaming:
            await self.cancel_answer()
            self.notify("Answer cancelled; the partial text is kept.")

    def _last_user_message_id(self) -> int | None:
        assert self.conversation is not None
        users = [m for m in self.store.messages(self.conversation.id) if m.role == "user"]
        return users[-1].id if users else None

    async def _regenerate(self, side: str | None) -> None:
        assert self.conversation is not None
        await self.cancel_answer()
        last_user = self._last_user_message_id()
        if last_user is None:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        store = self.store
        store.delete_messages_from(self.conversation.id, last_user + 1)
        conv_id = self.conversation.id
        await self.query_one(Transcript).show(store.messages(conv_id), store.parts_of(conv_id))
        self.start_answer(side)

    async def action_regenerate(self) -> None:
        """Ctrl+R: answer the last message again."""
        await self._regenerate(None)

    async def action_regenerate_other(self) -> None:
        """Ctrl+O: answer the last message again on the side that did not answer it."""
        last = self.query_one(Transcript).last_answer()
        ran_on = last.message.route.backend if last and last.message.route else "local"
        other = "cloud" if ran_on == "local" else "local"
        problem = self.session.cannot_pin(other, self.conversation)
        if problem:
            self.notify(problem, severity="warning", timeout=6)
            return
        await self._regenerate(other)

    async def action_edit_last(self) -> None:
        """Ctrl+L: put the last message back in the input; sending replaces it and its
        answer."""
        assert self.conversation is not None
        await self.cancel_answer()
        last_user = self._last_user_message_id()
        message = self.store.message(last_user) if last_user is not None else None
        if message is None:
            self.notify("No message to edit yet.", severity="warning")
            return
        composer = self.query_one(Composer)
        composer.text = message.content
        composer.focus()
        self._editing = message
        self.notify("Editing the last message: Enter resends it (its answer is replaced).")

    def _copy(self, text: str, what: str) -> None:
        self.app.copy_to_clipboard(text)  # OSC 52
        if sys.platform == "darwin" and shutil.which("pbcopy"):
            # Terminal.app has no OSC 52.
            subprocess.run(["pbcopy"], input=text.encode(), check=False)
        self.notify(f"Copied {what} ({len(text)} characters).")

    def action_copy_answer(self) -> None:
        """Ctrl+T: copy the last answer."""
        last = self.query_one(Transcript).last_answer()
        if last is None or not last.body_text:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self._copy(last.body_text, "the answer")

    def action_copy_code(self) -> None:
        """Ctrl+G: copy the last code block of the conversation."""
        for view in reversed(self.query_one(Transcript).views()):
            blocks = CODE_BLOCK.findall(view.body_text)
            if blocks:
                self._copy(blocks[-1].rstrip("\n"), "the code block")
                return
        self.notify("No code block in this conversation.", severity="warning")

    async def action_new_conversation(self) -> None:
        """Ctrl+N: start a new conversation."""
        conv = self.store.create_conversation(DEFAULT_TITLE)
        await self.open_conversation(conv.id)
        self.query_one(Composer).focus()

    @work
    async def action_rename(self) -> None:
        """F2: rename this conversation."""
        assert self.conversation is not None
        title = await self.app.push_screen_wait(
            TextPrompt("Rename conversation", self.conversation.title)
        )
        if title and title.strip():
            self.store.update_conversation(self.conversation.id, title=title.strip())
            self._reload_conversation()
            self.refresh_sidebar()

    @work
    async def action_delete(self) -> None:
        """F8: delete this conversation (after a confirmation)."""
        assert self.conversation is not None
        sure = await self.app.push_screen_wait(
            Confirm(f"Delete “{self.conversation.title}” and all its messages?")
        )
        if not sure:
            return
        await self.cancel_answer()
        store = self.store
        store.delete_conversation(self.conversation.id)
        remaining = store.conversations()
        conv = remaining[0] if remaining else store.create_conversation(DEFAULT_TITLE)
        await self.open_conversation(conv.id)

    @work
    async def action_search(self) -> None:
        """Ctrl+F: search every conversation and open the one chosen."""
        conv_id = await self.app.push_screen_wait(SearchDialog(self.store))
        if conv_id:
            await self.open_conversation(conv_id)

    def action_export(self) -> None:
        """Ctrl+S: export this conversation as Markdown and JSON."""
        assert self.conversation is not None
        folder = paths().data_dir / "exports"
        try:
            md, js = export_conversation(self.store, self.conversation.id, folder)
        except OSError as exc:
            self.notify(f"Export failed: {exc}", severity="error")
            return
        self.notify(f"Exported to {md} and {js.name}", timeout=8)

    def action_toggle_sidebar(self) -> None:
        """Ctrl+B: show or hide the conversation list."""
        sidebar = self.query_one(ConversationList)
        sidebar.display = not sidebar.display

    def action_route_record(self) -> None:
        """F4: the full route record of the last answer."""
        last = self.query_one(Transcript).last_answer()
        if last is None or last.message.route is None:
            self.notify("No finished answer yet.", severity="warning")
            return
        self.app.push_screen(RouteRecord(last.message))

    @on(MessageView.RouteRequested)
    def _route_clicked(self, event: MessageView.RouteRequested) -> None:
        message = self.store.message(event.message_id)
        if message is not None:
            self.app.push_screen(RouteRecord(message))

    @work
    async def action_system_prompt(self) -> None:
        """F5: this conversation's system prompt."""
        assert self.conversation is not None
        text = await self.app.push_screen_wait(
            TextPrompt("System prompt for this conversation", self.conversation.system_prompt)
        )
        if text is not None:
            self.store.update_conversation(self.conversation.id, system_prompt=text)
            self._reload_conversation()
            self.notify("System prompt set." if text else "System prompt removed.")

    @work
    async def action_adapter(self) -> None:
        """F6: the fine-tuned adapter for this conversation (empty: the base model)."""
        assert self.conversation is not None
        name = await self.app.push_screen_wait(
            TextPrompt(
                "Adapter for this conversation (empty: base model)",
                self.conversation.adapter,
                placeholder="adapter name",
            )
        )
        if name is not None:
            self.store.update_conversation(self.conversation.id, adapter=name.strip())
            self._reload_conversation()
            self.notify(f"Adapter: {name.strip() or 'none (base model)'}.")

    def action_cycle_thinking(self) -> None:
        """F10: this conversation's thinking switch: the model's default → on → off."""
        assert self.conversation is not None
        now = self.store.thinking(self.conversation.id)
        after = {None: True, True: False, False: None}[now]
        self.store.set_thinking(self.conversation.id, after)
        self.notify({True: "Thinking on for this conversation.",
                     False: "Thinking off for this conversation.",
                     None: "Thinking: the model's default."}[after])

    @work
    async def action_tool_servers(self) -> None:
        """F11: which MCP servers' tools this conversation offers the model."""
        assert self.conversation is not None
        conv, session = self.conversation, self.session
        on = session.tool_servers(self.store.tool_servers(conv.id), conv)
        choices = await self.app.push_screen_wait(ToolServers(session.tools.states(), on))
        if choices is None:
            return
        self.store.set_tool_servers(conv.id, choices)
        used = session.tool_servers(choices, conv)  # none on another machine if local-only
        await session.tools.start(used)
        for state in session.tools.states():
            if state.name in used and state.status != "ready":
                self.notify(f"MCP server {state.name!r} is {state.status}"
                            + (f": {state.detail}" if state.detail else ""), severity="warning")
        count = len(session.tools.tools(used))
        self.notify(f"{count} tool(s) offered in this conversation.")

    def action_toggle_local_only(self) -> None:
        """F7: pin this conversation to this device (never sent to the cloud)."""
        assert self.conversation is not None
        pinned = not self.conversation.local_only
        self.store.update_conversation(self.conversation.id, local_only=pinned)
        self._reload_conversation()
        self.refresh_sidebar()
        self._show_pin()
        self.notify(
            "Pinned to this device: answers never go to the cloud."
            if pinned
            else "Unpinned: the router decides again."
        )
