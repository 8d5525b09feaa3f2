"""The three settings tabs (Data & model, Training, Scheduler) and the form they make together.

Each tab is one `CTkFrame` that lays out its `FieldsPanel`s; the Scheduler
tab also holds the live `PreviewPanel` and the "Find LR..." button.
`SettingsTabs` is the form over the draft: every edit goes to the
`PresetDraft` and then to the injected `on_changed()` (the app recomputes
the preview), `show_draft()` puts the draft's values into the widgets, and
`show_state(state)` draws a computed preview: the curve, the validator's
message at its field, the scaled-LR note and the image and caption counts.
"""

from collections.abc import Callable
from pathlib import Path
from tkinter import filedialog

import customtkinter as ctk

from ui.controllers.fields import (
    DATA_MODEL_FIELDS,
    LORA_FIELDS,
    METHOD_FIELD,
    OUTPUT_FIELDS,
    SCHEDULER_FIELDS,
    SCHEDULER_TYPE_FIELD,
    TRAINING_FIELDS,
    active_scheduler_keys,
)
from ui.controllers.preset_draft import (
    PresetDraft,
    PreviewState,
    concept_error_target,
    scaled_lr_note,
    trains_on_captions,
)
from ui.views.concepts_panel import ConceptsPanel
from ui.views.fields_panel import FieldRow, FieldsPanel, ParamGroupsEditor
from ui.views.preview_panel import PreviewPanel


class DataTab(ctk.CTkFrame):
    """The concepts over the dataset and model fields; beside them the text-to-image fields (LoRA rows only
    for "lora"). `concept_callbacks` are the `ConceptsPanel`'s (on_add, on_edit, on_remove, on_browse)."""

    def __init__(self, master, on_edit, on_browse, on_recount: Callable[[], None], concept_callbacks):
        super().__init__(master, fg_color="transparent")
        self.grid_columnconfigure(0, weight=2, uniform="columns")  # the concept rows need ~780 pixels
        self.grid_columnconfigure(1, weight=1, uniform="columns")
        self.grid_rowconfigure(0, weight=3)  # the concept rows (and one open detail area) over the fields
        self.grid_rowconfigure(1, weight=2)
        self.concepts_panel = ConceptsPanel(self, *concept_callbacks)
        self.concepts_panel.grid(row=0, column=0, sticky="nsew", padx=(0, 6), pady=(0, 6))
        self.data_panel = FieldsPanel(self, DATA_MODEL_FIELDS, on_edit, on_browse, title="Dataset and model")
        self.data_panel.grid(row=1, column=0, sticky="nsew", padx=(0, 6))
        self.data_panel.add_widget(ctk.CTkButton(self.data_panel, text="Count the images again", width=180,
                                                 command=on_recount), sticky="w")
        self.lora_panel = FieldsPanel(self, (METHOD_FIELD, *LORA_FIELDS), on_edit, title="Text-to-image training")
        self.lora_panel.grid(row=0, column=1, rowspan=2, sticky="nsew")

    def show_concepts(self, draft: PresetDraft) -> None:
        """The concept rows; with concepts, the single-folder fields (data.path, data.repeats) are hidden."""
        self.concepts_panel.set_concepts([draft.concept_texts(index) for index in range(len(draft.concepts()))])
        single = () if draft.concepts() else SINGLE_FOLDER_KEYS
        self.data_panel.show_only([key for key in self.data_panel.rows if key not in SINGLE_FOLDER_KEYS] + list(single))

    def show_method(self, method: str | None) -> None:
        lora_rows = tuple(spec.key for spec in LORA_FIELDS) if method == "lora" else ()
        self.lora_panel.show_only((METHOD_FIELD.key, *lora_rows))

    def show_counts(self, state: PreviewState, draft: PresetDraft) -> None:
        """The image count beside data.path; for text-to-image models, the caption count."""
        path_row = self.data_panel.rows["data.path"]
        if state.counting:
            path_row.set_note("counting ...")
        elif state.image_count is not None:
            path_row.set_note(f"{state.image_count} image{'s' * (state.image_count != 1)}")
        elif state.error_key == "data.path" or (path_row.note.cget("text") == "counting ..."
                                                 and not draft.counter.busy):
            path_row.set_note("")  # a folder's problem is the message under it
        row = self.data_panel.rows["data.caption_extension"]
        if state.counting_captions:
            row.set_note("counting captions ...")
        elif state.captions is not None and state.preset is not None:
            row.set_note(state.captions.describe(state.preset.data.default_caption))
        elif state.fresh or not draft.caption_counter.busy:
            row.set_note("")


SINGLE_FOLDER_KEYS = ("data.path", "data.repeats")  # data.path alone: one concept; hidden with data.concepts


class TrainingTab(ctk.CTkFrame):
    """Training fields; beside them the output fields and the parameter groups."""

    def __init__(self, master, on_edit, on_browse, on_edit_group, on_add_group, on_remove_group):
        super().__init__(master, fg_color="transparent")
        self.grid_columnconfigure((0, 1), weight=1, uniform="columns")
        self.grid_rowconfigure(0, weight=1)
        self.training_panel = FieldsPanel(self, TRAINING_FIELDS, on_edit, on_browse, title="Training")
        self.training_panel.grid(row=0, column=0, sticky="nsew", padx=(0, 6))
        self.output_panel = FieldsPanel(self, OUTPUT_FIELDS, on_edit, on_browse, title="Output")
        self.output_panel.grid(row=0, column=1, sticky="nsew")
        self.groups_editor = ParamGroupsEditor(self.output_panel, on_edit_group, on_add_group, on_remove_group)
        self.output_panel.add_widget(self.groups_editor, sticky="w")


class SchedulerTab(ctk.CTkFrame):
    """The fields of the chosen schedule type beside the live preview."""

    def __init__(self, master, on_edit, on_find_lr: Callable[[], None]):
        super().__init__(master, fg_color="transparent")
        self.grid_columnconfigure(1, weight=1)
        self.grid_rowconfigure(0, weight=1)
        self.scheduler_panel = FieldsPanel(self, (SCHEDULER_TYPE_FIELD, *SCHEDULER_FIELDS), on_edit,
                                           title="Schedule", width=380)
        self.scheduler_panel.grid(row=0, column=0, sticky="nsw", padx=(0, 6))
        self.scheduler_panel.add_widget(ctk.CTkButton(self.scheduler_panel, text="Find LR...", width=120,
                                                      command=on_find_lr), sticky="w")
        self.preview_panel = PreviewPanel(self)
        self.preview_panel.grid(row=0, column=1, sticky="nsew")

    def show_type(self, schedule_type: str) -> None:
        self.scheduler_panel.show_only(("scheduler.type", *active_scheduler_keys(schedule_type)))


def _place(tab: ctk.CTkFrame) -> ctk.CTkFrame:
    tab.pack(fill="both", expand=True)
    return tab


class SettingsTabs:
    """The settings form over the draft, spread over three tabs of `tabview`."""

    def __init__(self, tabview: ctk.CTkTabview, draft: PresetDraft, on_changed: Callable[[], None],
                 on_find_lr: Callable[[], None]):
        self._draft = draft
        self._on_changed = on_changed
        self.data_tab = _place(DataTab(tabview.tab("Data & model"), self.edit, self.browse, self.recount,
                                       (self.add_concept, self.edit_concept, self.remove_concept,
                                        self.browse_concept)))
        self.training_tab = _place(TrainingTab(tabview.tab("Training"), self.edit, self.browse, self.edit_group,
                                               self.add_group, self.remove_group))
        self.scheduler_tab = _place(SchedulerTab(tabview.tab("Scheduler"), self.edit, on_find_lr))

    @property
    def panels(self) -> tuple[FieldsPanel, ...]:
        data, training = self.data_tab, self.training_tab
        return (data.data_panel, data.lora_panel, training.training_panel, training.output_panel,
                self.scheduler_tab.scheduler_panel)

    def field_row(self, key: str) -> FieldRow:
        for panel in self.panels:
            if key in panel.rows:
                return panel.rows[key]
        raise KeyError(key)

    # --- draft -> widgets --------------------------------------------------------

    def show_draft(self) -> None:
        """Put every value of the draft into its widget (after a load or a type switch)."""
        for panel in self.panels:
            for key, row in panel.rows.items():
                row.set_value(self._draft.text(key))
        self.training_tab.groups_editor.set_groups(self._draft.groups())
        self.scheduler_tab.show_type(self._draft.schedule_type)
        self.data_tab.show_method(self._draft.value("training.method"))
        self.data_tab.show_concepts(self._draft)

    def show_state(self, state: PreviewState) -> None:
        """A computed preview: the curve, the field marks, the scaled-LR note and the counts."""
        self.scheduler_tab.preview_panel.show(state)
        self._mark_errors(state)
        self.field_row("optimizer.lr").set_note(scaled_lr_note(state.preview if state.fresh else None))
        self.data_tab.show_counts(state, self._draft)
        self.data_tab.concepts_panel.show_counts(state.concept_counts, trains_on_captions(state.preview))

    def _mark_errors(self, state: PreviewState) -> None:
        key = state.error_key if state.error else None
        message = state.error
        if key is None and state.start_refusal is not None:
            key, message = state.start_refusal  # valid, but not something the app's Start can do
        for panel in self.panels:
            for row_key, row in panel.rows.items():
                row.set_error(message if row_key == key else None)
        group_index = group_field = None
        in_groups = bool(key and key.startswith("optimizer.param_groups"))
        if in_groups:
            parts = key.split(".")
            group_index = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            group_field = parts[3] if len(parts) > 3 else None
        self.training_tab.groups_editor.set_error(group_index, group_field, state.error if in_groups else None)
        target = concept_error_target(key)
        self.data_tab.concepts_panel.set_error(*(target or (None, None)), message if target else None)
        self.data_tab.concepts_panel.set_message(message if key == "data.concepts" else None)

    # --- widgets -> draft ----------------------------------------------------------

    def edit(self, key: str, value) -> None:
        self._draft.set_text(key, value)
        if key in ("scheduler.type", "training.method"):
            self.show_draft()
        self._on_changed()

    def edit_group(self, index: int, field: str, text: str) -> None:
        self._draft.set_group_text(index, field, text)
        self._on_changed()

    def add_group(self) -> None:
        self._draft.add_group()
        self.training_tab.groups_editor.set_groups(self._draft.groups())
        self._on_changed()

    def remove_group(self, index: int) -> None:
        self._draft.remove_group(index)
        self.training_tab.groups_editor.set_groups(self._draft.groups())
        self._on_changed()

    def add_concept(self) -> None:
        chosen = filedialog.askdirectory(parent=self.data_tab.winfo_toplevel(), initialdir=".",
                                         title="Choose a concept's folder")
        if chosen:
            self.add_concept_folder(chosen)

    def add_concept_folder(self, path: str) -> None:
        """A new concept for `path` (a draft with data.path alone turns it into the first concept)."""
        self._draft.add_concept(path)
        self.data_tab.show_concepts(self._draft)
        self._on_changed()

    def edit_concept(self, index: int, key: str, value) -> None:
        self._draft.set_concept_text(index, key, value)
        if key == "amount_kind":  # the entry now holds the samples (or the repeats)
            self.data_tab.concepts_panel.rows[index].set_texts(self._draft.concept_texts(index))
        self._on_changed()

    def remove_concept(self, index: int) -> None:
        self._draft.remove_concept(index)
        self.data_tab.show_concepts(self._draft)
        self._on_changed()

    def browse_concept(self, index: int) -> None:
        current = self._draft.concept_value(index, "path") or "."
        chosen = filedialog.askdirectory(parent=self.data_tab.winfo_toplevel(),
                                         initialdir=current if Path(current).is_dir() else ".",
                                         title="Choose the concept's folder")
        if chosen:
            self._forget_counts(chosen)
            self._draft.set_concept_text(index, "path", chosen)
            self.data_tab.concepts_panel.rows[index].set_texts(self._draft.concept_texts(index))
            self._on_changed()

    def browse(self, key: str) -> None:
        current = self._draft.value(key) or "."
        chosen = filedialog.askdirectory(parent=self.data_tab.winfo_toplevel(),
                                         initialdir=current if Path(current).is_dir() else ".",
                                         title=f"Choose the {key} folder")
        if chosen:
            if key == "data.path":
                self._forget_counts(chosen)
            self.field_row(key).set_value(chosen)
            self.edit(key, chosen)

    def recount(self) -> None:
        paths = [self._draft.value("data.path")] + [self._draft.concept_value(index, "path")
                                                     for index in range(len(self._draft.concepts()))]
        for path in paths:
            if isinstance(path, str) and path:
                self._forget_counts(path)
        self._draft.forget_concepts()
        self._on_changed()

    def _forget_counts(self, path: str) -> None:
        self._draft.counter.forget(path)
        self._draft.caption_counter.forget(path)
