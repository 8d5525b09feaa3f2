"""The concepts panel: one compact row per concept of data.concepts, in a scrollable list.

A row holds what a user changes most: name, type, repeats or samples (a switch and one entry), loss weight,
the folder's image and caption counts, a "Captions" expander and a remove button. The expander opens the
detail area (the folder with Browse, and the caption options), built the first time it opens, so twenty
collapsed rows stay twenty lines of a few widgets each. Every edit goes out as `on_edit(index, key, value)`
(key "amount" is the repeats or samples entry, "amount_kind" the switch); the panel never interprets values.
`set_concepts(rows)` adds or removes rows only when their number changed and otherwise sets just the
texts that differ, so an edit never rebuilds the list.
"""

from collections.abc import Callable

import customtkinter as ctk

from ui.controllers.fields import CONCEPT_AMOUNT_KINDS, CONCEPT_CAPTION_KEYS, CONCEPT_FIELDS, CONCEPT_TYPES
from ui.views.fields_panel import ERROR_COLOR, HINT_COLOR, FieldRow, _default_border

# The compact row's inputs: (key, width in pixels).
ROW_ENTRIES = (("name", 120), ("amount", 56), ("loss_weight", 52))
COLUMN_TITLES = (("name", 124), ("type", 124), ("per epoch", 148), ("loss w.", 56), ("images", 150))
DETAIL_KEYS = ("path", *CONCEPT_CAPTION_KEYS)
SMALL = 11
DETAIL_NOTE = ("a caption option left as it is follows the Dataset field of the same name; shuffle tags splits the "
               "caption on the separator and shuffles all but the first 'keep tags'; tag dropout drops each other "
               "tag with that probability")


class ConceptRow(ctk.CTkFrame):
    """One concept: the compact line, and the detail area under it when expanded."""

    def __init__(self, master, index: int, on_edit: Callable[[int, str, object], None],
                 on_remove: Callable[[int], None], on_browse: Callable[[int], None]):
        super().__init__(master, fg_color=("gray92", "gray17"), corner_radius=6)
        self.index = index
        self._on_edit, self._on_browse = on_edit, on_browse
        self._quiet = False
        self.grid_columnconfigure(0, weight=1)
        line = ctk.CTkFrame(self, fg_color="transparent")
        line.grid(row=0, column=0, sticky="we", padx=4, pady=2)
        self.variables: dict[str, ctk.StringVar] = {}
        self.inputs: dict[str, ctk.CTkBaseClass] = {}
        self._entry(line, "name", 120).grid(row=0, column=0, padx=(0, 4))
        self._menu(line, "type", CONCEPT_TYPES, 120).grid(row=0, column=1, padx=(0, 4))
        self._menu(line, "amount_kind", CONCEPT_AMOUNT_KINDS, 88).grid(row=0, column=2, padx=(0, 4))
        self._entry(line, "amount", 56).grid(row=0, column=3, padx=(0, 4))
        self._entry(line, "loss_weight", 52).grid(row=0, column=4, padx=(0, 4))
        self.counts = ctk.CTkLabel(line, text="", width=150, anchor="w", font=ctk.CTkFont(size=SMALL, weight="bold"))
        self.counts.grid(row=0, column=5, padx=(0, 4))
        self.expander = ctk.CTkButton(line, text="Captions ▸", width=84, command=self.toggle)
        self.expander.grid(row=0, column=6, padx=(0, 4))
        ctk.CTkButton(line, text="✕", width=28, fg_color=("gray70", "gray30"), hover_color=ERROR_COLOR,
                      command=lambda: on_remove(self.index)).grid(row=0, column=7)
        self.message = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=ERROR_COLOR,
                                    font=ctk.CTkFont(size=SMALL), wraplength=640)
        self.detail: ctk.CTkFrame | None = None  # built the first time the row is expanded
        self.detail_rows: dict[str, FieldRow] = {}
        self._texts: dict[str, object] = {}
        self._error: tuple[str | None, str | None] = (None, None)

    def _entry(self, master, key: str, width: int) -> ctk.CTkEntry:
        variable = ctk.StringVar(value="")
        entry = ctk.CTkEntry(master, textvariable=variable, width=width, placeholder_text=key.replace("_", " "))
        variable.trace_add("write", lambda *_: self._edited(key, variable.get()))
        self.variables[key], self.inputs[key] = variable, entry
        return entry

    def _menu(self, master, key: str, choices, width: int) -> ctk.CTkOptionMenu:
        variable = ctk.StringVar(value=choices[0])
        menu = ctk.CTkOptionMenu(master, values=list(choices), variable=variable, width=width,
                                 dynamic_resizing=False, command=lambda value: self._edited(key, value))
        self.variables[key], self.inputs[key] = variable, menu
        return menu

    def _edited(self, key: str, value) -> None:
        if not self._quiet:
            self._texts[key] = value
            self._on_edit(self.index, key, value)

    @property
    def expanded(self) -> bool:
        return self.detail is not None and bool(self.detail.winfo_manager())

    def toggle(self) -> None:
        """Open or close the detail area (the folder and the caption options)."""
        if self.expanded:
            self.detail.grid_remove()
            self.expander.configure(text="Captions ▸")
            return
        if self.detail is None:
            self._build_detail()
        self.detail.grid(row=2, column=0, sticky="we", padx=(24, 4), pady=(0, 4))
        self.expander.configure(text="Captions ▾")

    def _build_detail(self) -> None:
        """The folder on one line, the caption options two to a line (their hints in one note under them)."""
        self.detail = ctk.CTkFrame(self, fg_color="transparent")
        self.detail.grid_columnconfigure((0, 1), weight=1, uniform="detail")
        for position, key in enumerate(DETAIL_KEYS):
            field_row = FieldRow(self.detail, CONCEPT_FIELDS[key], lambda k, v: self._edited(k, v),
                                 (lambda _key: self._on_browse(self.index)) if key == "path" else None)
            field_row.hint.grid_remove()
            if key == "path":
                field_row.grid(row=0, column=0, columnspan=2, sticky="we", pady=1)
            else:
                field_row.grid(row=1 + (position - 1) // 2, column=(position - 1) % 2, sticky="we", pady=1)
            self.detail_rows[key] = field_row
            if key in self._texts:
                field_row.set_value(self._texts[key])
        ctk.CTkLabel(self.detail, text=DETAIL_NOTE, anchor="w", justify="left", text_color=HINT_COLOR,
                     font=ctk.CTkFont(size=SMALL), wraplength=640).grid(row=9, column=0, columnspan=2, sticky="w")

    def set_texts(self, texts: dict) -> None:
        """Show the concept's texts (from `PresetDraft.concept_text`) without reporting them as edits;
        only the inputs whose text differs are touched."""
        self._quiet = True
        try:
            for key, text in texts.items():
                if self._texts.get(key) == text:
                    continue
                self._texts[key] = text
                if key in self.variables:
                    self.variables[key].set(text)
                if key in self.detail_rows:
                    self.detail_rows[key].set_value(text)
        finally:
            self._quiet = False

    def set_counts(self, text: str, problem: bool) -> None:
        if self.counts.cget("text") != text:
            self.counts.configure(text=text, text_color=ERROR_COLOR if problem else ("gray10", "gray90"))

    def set_error(self, key: str | None, message: str | None) -> None:
        """Mark the input of `key` (None: the whole concept) with the validator's message, or clear."""
        if (key if message else None, message) == self._error:
            return
        self._error = (key if message else None, message)
        if message and key in DETAIL_KEYS and not self.expanded:
            self.toggle()  # the problem is in the detail area: open it
        for name, widget in self.inputs.items():
            if isinstance(widget, ctk.CTkEntry):
                widget.configure(border_color=ERROR_COLOR if message and name == key else _default_border())
        for name, field_row in self.detail_rows.items():
            field_row.set_error(message if name == key else None)
        if message and key not in self.detail_rows:
            self.message.configure(text=message)
            self.message.grid(row=1, column=0, sticky="w", padx=8)
        else:
            self.message.grid_remove()


class ConceptsPanel(ctk.CTkFrame):
    """The list of concepts with "Add folder..." over it; callbacks injected."""

    def __init__(self, master, on_add: Callable[[], None], on_edit: Callable[[int, str, object], None],
                 on_remove: Callable[[int], None], on_browse: Callable[[int], None]):
        super().__init__(master)
        self._on_edit, self._on_remove, self._on_browse = on_edit, on_remove, on_browse
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(3, weight=1)
        header = ctk.CTkFrame(self, fg_color="transparent")
        header.grid(row=0, column=0, sticky="we", padx=8, pady=(8, 0))
        ctk.CTkLabel(header, text="Concepts", font=ctk.CTkFont(size=14, weight="bold")).pack(side="left")
        self.add_button = ctk.CTkButton(header, text="Add folder...", width=110, command=on_add)
        self.add_button.pack(side="right")
        self.hint = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=HINT_COLOR,
                                 font=ctk.CTkFont(size=SMALL), wraplength=640)
        self.hint.grid(row=1, column=0, sticky="we", padx=8)
        self.message = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=ERROR_COLOR,
                                    font=ctk.CTkFont(size=SMALL), wraplength=640)
        titles = ctk.CTkFrame(self, fg_color="transparent")
        titles.grid(row=2, column=0, sticky="we", padx=14)
        for column, (text, width) in enumerate(COLUMN_TITLES):
            ctk.CTkLabel(titles, text=text, width=width, anchor="w", text_color=HINT_COLOR,
                         font=ctk.CTkFont(size=SMALL)).grid(row=0, column=column)
        self.list = ctk.CTkScrollableFrame(self, fg_color="transparent")
        self.list.grid(row=3, column=0, sticky="nsew", padx=4, pady=(0, 6))
        self.list.grid_columnconfigure(0, weight=1)
        self.rows: list[ConceptRow] = []
        self.built = 0  # rows ever built (a test checks that an edit builds none)

    def set_concepts(self, concepts: list[dict]) -> None:
        """Show `concepts` (one dict of texts each); rows are added or removed at the end only."""
        while len(self.rows) > len(concepts):
            self.rows.pop().destroy()
        while len(self.rows) < len(concepts):
            row = ConceptRow(self.list, len(self.rows), self._on_edit, self._on_remove, self._on_browse)
            row.grid(row=len(self.rows), column=0, sticky="we", pady=2)
            self.rows.append(row)
            self.built += 1
        for row, texts in zip(self.rows, concepts):
            row.set_texts(texts)
        self.hint.configure(text=(
            "each concept is a folder of images with its own repeats (or samples per epoch), type and captions; "
            "the Dataset fields' caption options are their defaults" if concepts else
            "one folder: the Dataset folder field. Add folders to train several concepts (each with its own "
            "repeats or samples, captions and loss weight) or regularization images"))

    def show_counts(self, counts, with_captions: bool = True) -> None:
        """Each concept's counts (`ConceptCount`s, in list order); the caption count only where the model
        trains on captions."""
        for row, count in zip(self.rows, counts):
            row.set_counts(count.describe(with_captions), problem=bool(count.error))

    def set_message(self, message: str | None) -> None:
        """A problem of the list as a whole (data.path and data.concepts both set), under the hint."""
        if message:
            self.message.configure(text=message)
            self.message.grid(row=4, column=0, sticky="we", padx=8, pady=(0, 6))
        else:
            self.message.grid_remove()

    def set_error(self, index: int | None, key: str | None, message: str | None) -> None:
        for row in self.rows:
            row.set_error(key, message if row.index == index else None)
