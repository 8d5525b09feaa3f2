"""Rows of preset fields: a label, an input, a one-line hint, and the validator's message.

`FieldsPanel` lays out one `FieldRow` per `FieldSpec` and reports every
edit as `on_edit(key, value)` (text for entries and menus, a bool for check
boxes); it never interprets values. `ParamGroupsEditor` edits
`optimizer.param_groups` the same way, by index. Both only lay out
widgets: the draft controller decides what the values mean.
"""

from collections.abc import Callable

import customtkinter as ctk

from ui.controllers.fields import PARAM_GROUP_FIELDS, FieldSpec

ERROR_COLOR = ("#c0392b", "#ff6b6b")
HINT_COLOR = ("gray35", "gray65")
LABEL_WIDTH = 130
ENTRY_WIDTH = 200
FOLDER_WIDTH = 360


def _default_border():
    return ctk.ThemeManager.theme["CTkEntry"]["border_color"]


class FieldRow(ctk.CTkFrame):
    """One field: the label, input, Browse button and note on one line; the hint and the
    validator's message below it, wrapped to the row's width.

    The line is a frame of its own, so a message appearing below never moves the input sideways.
    """

    def __init__(self, master, spec: FieldSpec, on_edit: Callable[[str, object], None],
                 on_browse: Callable[[str], None] | None = None):
        super().__init__(master, fg_color="transparent")
        self.spec = spec
        self._on_edit = on_edit
        self._quiet = False
        wide = spec.kind == "folder"
        self.grid_columnconfigure(0, weight=1)
        self.line = ctk.CTkFrame(self, fg_color="transparent")
        self.line.grid(row=0, column=0, sticky="we")
        self.line.grid_columnconfigure(1, weight=1 if wide else 0)
        ctk.CTkLabel(self.line, text=spec.label, width=LABEL_WIDTH, anchor="w").grid(row=0, column=0, sticky="w")
        if spec.kind == "bool":
            self.variable = ctk.BooleanVar(value=False)
            self.input = ctk.CTkCheckBox(self.line, text="", variable=self.variable, width=24,
                                         command=lambda: self._edited(self.variable.get()))
        elif spec.kind == "choice":
            self.variable = ctk.StringVar(value=spec.choices[0])
            self.input = ctk.CTkOptionMenu(self.line, values=list(spec.choices), variable=self.variable,
                                           width=ENTRY_WIDTH, dynamic_resizing=False, command=self._edited)
        else:
            self.variable = ctk.StringVar(value="")
            self.input = ctk.CTkEntry(self.line, textvariable=self.variable,
                                      width=FOLDER_WIDTH if wide else ENTRY_WIDTH)
            self.variable.trace_add("write", lambda *_: self._edited(self.variable.get()))
        self.input.grid(row=0, column=1, sticky="we" if wide else "w", padx=(4, 0))
        if spec.kind == "folder" and on_browse is not None:
            ctk.CTkButton(self.line, text="Browse...", width=76, command=lambda: on_browse(spec.key)).grid(
                row=0, column=2, padx=(4, 0))
        self.note = ctk.CTkLabel(self.line, text="", anchor="w", font=ctk.CTkFont(size=12, weight="bold"))
        self.hint = ctk.CTkLabel(self, text=spec.hint, anchor="w", justify="left", text_color=HINT_COLOR,
                                 font=ctk.CTkFont(size=11), wraplength=LABEL_WIDTH + ENTRY_WIDTH)
        self.hint.grid(row=1, column=0, sticky="w")
        self.message = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=ERROR_COLOR,
                                    font=ctk.CTkFont(size=11), wraplength=LABEL_WIDTH + ENTRY_WIDTH)
        self.error: str | None = None
        self.bind("<Configure>", self._rewrap, add="+")

    def _rewrap(self, event) -> None:
        """Wrap the hint and the message at the row's width (in customtkinter's unscaled pixels)."""
        width = max(120, int(event.width / self._get_widget_scaling()) - 8)
        for label in (self.hint, self.message):
            if label.cget("wraplength") != width:
                label.configure(wraplength=width)

    def _edited(self, value) -> None:
        if not self._quiet:
            self._on_edit(self.spec.key, value)

    def set_value(self, value) -> None:
        """Show `value` without reporting it as an edit."""
        self._quiet = True
        try:
            if self.variable.get() != value:
                self.variable.set(value)
        finally:
            self._quiet = False

    def get_value(self):
        return self.variable.get()

    def set_note(self, text: str) -> None:
        """A short status beside the input (e.g. the image count of a folder)."""
        self.note.configure(text=text)
        if text:
            self.note.grid(row=0, column=3, padx=(8, 0), sticky="w")
        else:
            self.note.grid_remove()

    def set_error(self, message: str | None) -> None:
        """Mark the field (red border and the validator's message) or clear the mark."""
        if message == self.error:
            return
        self.error = message
        if isinstance(self.input, ctk.CTkEntry):
            self.input.configure(border_color=ERROR_COLOR if message else _default_border())
        if message:
            self.message.configure(text=message)
            self.message.grid(row=2, column=0, sticky="w")
        else:
            self.message.grid_remove()


class FieldsPanel(ctk.CTkScrollableFrame):
    def __init__(self, master, specs, on_edit, on_browse=None, title: str | None = None, **kwargs):
        super().__init__(master, **kwargs)
        self.grid_columnconfigure(0, weight=1)
        self.rows: dict[str, FieldRow] = {}
        self._next_row = 0
        if title:
            self.add_title(title)
        self.add_rows(specs, on_edit, on_browse)

    def add_title(self, title: str) -> None:
        ctk.CTkLabel(self, text=title, anchor="w", font=ctk.CTkFont(size=14, weight="bold")).grid(
            row=self._next_row, column=0, sticky="w", padx=6, pady=(8, 2))
        self._next_row += 1

    def add_rows(self, specs, on_edit, on_browse=None) -> None:
        for spec in specs:
            row = FieldRow(self, spec, on_edit, on_browse)
            row.grid(row=self._next_row, column=0, sticky="we", padx=6, pady=3)
            row.grid_position = self._next_row
            self.rows[spec.key] = row
            self._next_row += 1

    def add_widget(self, widget, sticky: str = "we") -> None:
        widget.grid(row=self._next_row, column=0, sticky=sticky, padx=6, pady=3)
        self._next_row += 1

    def show_only(self, keys) -> None:
        """Show the rows of `keys` (in their fixed order) and hide the others."""
        for key, row in self.rows.items():
            if key in keys:
                row.grid(row=row.grid_position, column=0, sticky="we", padx=6, pady=3)
            else:
                row.grid_remove()

    def visible_keys(self) -> list[str]:
        return [key for key, row in self.rows.items() if row.winfo_manager()]


class ParamGroupsEditor(ctk.CTkFrame):
    """One line per named parameter group: name, match (regex), lr, component (where match searches), remove."""

    def __init__(self, master, on_edit: Callable[[int, str, str], None], on_add: Callable[[], None],
                 on_remove: Callable[[int], None]):
        super().__init__(master)
        self._on_edit, self._on_remove = on_edit, on_remove
        self.grid_columnconfigure(0, weight=1)
        header = ctk.CTkFrame(self, fg_color="transparent")
        header.grid(row=0, column=0, sticky="we", padx=6, pady=(6, 0))
        ctk.CTkLabel(header, text="Parameter groups", font=ctk.CTkFont(size=14, weight="bold")).pack(side="left")
        ctk.CTkButton(header, text="Add group", width=90, command=on_add).pack(side="right")
        ctk.CTkLabel(self, text="a parameter joins the first group of its component whose match is found in its "
                                "name; the rest form 'unet' at the learning rate above (the text encoders: "
                                "'text_encoder', 'text_encoder_2' at the text encoder LR)",
                     text_color=HINT_COLOR, font=ctk.CTkFont(size=11), anchor="w", justify="left",
                     wraplength=420).grid(row=1, column=0, sticky="w", padx=6)
        self.headers = ctk.CTkFrame(self, fg_color="transparent")
        for column, (text, width) in enumerate((("name", 110), ("match (regex)", 150), ("LR", 90),
                                                ("component", 120))):
            ctk.CTkLabel(self.headers, text=text, width=width, anchor="w", text_color=HINT_COLOR,
                         font=ctk.CTkFont(size=11)).grid(row=0, column=column, padx=(0, 4))
        self.lines = ctk.CTkFrame(self, fg_color="transparent")
        self.lines.grid(row=3, column=0, sticky="we", padx=6, pady=(0, 6))
        self.message = ctk.CTkLabel(self, text="", text_color=ERROR_COLOR, font=ctk.CTkFont(size=11),
                                    anchor="w", justify="left", wraplength=420)
        self.entries: list[dict[str, ctk.CTkEntry]] = []
        self._quiet = False

    def set_groups(self, groups: list[dict]) -> None:
        """Show `groups` (name/match/lr texts); rebuilds the lines only when their number changed."""
        self._quiet = True
        try:
            if len(groups) != len(self.entries):
                for child in self.lines.winfo_children():
                    child.destroy()
                self.entries = [self._line(index) for index in range(len(groups))]
                if groups:
                    self.headers.grid(row=2, column=0, sticky="w", padx=6)
                else:
                    self.headers.grid_remove()
            for entries, group in zip(self.entries, groups):
                for field, entry in entries.items():
                    if entry.variable.get() != group[field]:
                        entry.variable.set(group[field])
        finally:
            self._quiet = False

    def _line(self, index: int) -> dict:
        entries = {}
        for column, (field, width) in enumerate((("name", 110), ("match", 150), ("lr", 90), ("component", 120))):
            variable = ctk.StringVar()
            if field == "component":
                entry = ctk.CTkOptionMenu(self.lines, variable=variable, width=width,
                                          values=list(PARAM_GROUP_FIELDS[field].choices))
            else:
                entry = ctk.CTkEntry(self.lines, textvariable=variable, width=width, placeholder_text=field)
            entry.variable = variable
            entry.grid(row=index, column=column, padx=(0, 4), pady=2)
            variable.trace_add("write", lambda *_, f=field, v=variable: self._edited(index, f, v.get()))
            entries[field] = entry
        ctk.CTkButton(self.lines, text="Remove", width=70, command=lambda: self._on_remove(index)).grid(
            row=index, column=4, pady=2)
        return entries

    def _edited(self, index: int, field: str, text: str) -> None:
        if not self._quiet:
            self._on_edit(index, field, text)

    def set_error(self, index: int | None, field: str | None, message: str | None) -> None:
        for line_index, entries in enumerate(self.entries):
            for name, entry in entries.items():
                if isinstance(entry, ctk.CTkOptionMenu):  # it offers only valid values, and has no border
                    continue
                marked = message and line_index == index and (field is None or name == field)
                entry.configure(border_color=ERROR_COLOR if marked else _default_border())
        if message:
            self.message.configure(text=message)
            self.message.grid(row=4, column=0, sticky="w", padx=6, pady=(0, 6))
        else:
            self.message.grid_remove()
