"""The conversation list (left, toggled with Ctrl+B)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.widgets import Label, ListItem, ListView

from tui.store import Conversation

__all__ = ["ConversationList"]


class ConversationList(ListView):
    """Conversations, most recent first; selecting one posts `ConversationList.Opened`."""

    @dataclass
    class Opened(Message):
        conversation_id: str

    def show(self, conversations: list[Conversation], current: str | None) -> None:
        """Replace the list and highlight `current`."""
        self.clear()
        index = None
        for i, conv in enumerate(conversations):
            pin = " ⌂" if conv.local_only else ""
            item = ListItem(Label(conv.title + pin, markup=False))
            item.conversation_id = conv.id  # type: ignore[attr-defined]
            self.append(item)
            if conv.id == current:
                index = i
        if index is not None:
            self.index = index

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        conv_id = getattr(event.item, "conversation_id", None)
        if conv_id:
            self.post_message(self.Opened(conv_id))
