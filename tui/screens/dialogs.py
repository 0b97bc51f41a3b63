"""Small modal dialogs: ask for a line of text, confirm, show a route record, search."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ListItem, ListView, Static

from tui.store import Store, StoredMessage

__all__ = ["Confirm", "RouteRecord", "SearchDialog", "TextPrompt"]


class TextPrompt(ModalScreen[str | None]):
    """Ask for one line of text; dismisses with the text, or None on Esc."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__(classes="dialog")
        self._title, self._value, self._placeholder = title, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label(self._title, classes="title", markup=False)
            yield Input(self._value, placeholder=self._placeholder, id="prompt-input")
            yield Label("Enter accepts · Esc cancels", classes="hint")

    @on(Input.Submitted)
    def _accept(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class Confirm(ModalScreen[bool]):
    """Yes or no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(False)", "No"),
        Binding("y", "dismiss(True)", "Yes"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog")
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label(self._question, classes="title", markup=False)
            yield Button("Yes (y)", id="yes", variant="error")
            yield Button("No (Esc)", id="no")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class RouteRecord(ModalScreen[None]):
    """The full route record and usage of one answer."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,f4", "dismiss(None)", "Close")]

    def __init__(self, message: StoredMessage) -> None:
        super().__init__(classes="dialog")
        self._message = message

    def compose(self) -> ComposeResult:
        record = asdict(self._message.route) if self._message.route else {}
        with Vertical(classes="box wide"):
            yield Label(f"Route record of answer #{self._message.id}", classes="title")
            yield Static(json.dumps(record, indent=2), markup=False, id="route-json")
            yield Label("Esc closes", classes="hint")


class SearchDialog(ModalScreen[str | None]):
    """Search every conversation; dismisses with the chosen conversation's id."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, store: Store) -> None:
        super().__init__(classes="dialog")
        self._store = store

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Search conversations", classes="title")
            yield Input(placeholder="words to find", id="search-input")
            yield ListView(id="search-results")
            yield Label("Enter searches · ↓ then Enter opens · Esc closes", classes="hint")

    @on(Input.Submitted)
    def _search(self, event: Input.Submitted) -> None:
        results = self.query_one(ListView)
        results.clear()
        for conv, msg in self._store.search(event.value):
            snippet = " ".join(msg.content.split())[:80]
            item = ListItem(Label(f"{conv.title} — {msg.role}: {snippet}", markup=False))
            item.conversation_id = conv.id  # type: ignore[attr-defined]
            results.append(item)
        if not results.children:
            results.append(ListItem(Label("nothing found")))

    @on(ListView.Selected)
    def _open(self, event: ListView.Selected) -> None:
        conv_id = getattr(event.item, "conversation_id", None)
        if conv_id:
            self.dismiss(conv_id)
