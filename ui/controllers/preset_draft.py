"""The draft preset the app edits, and the preview it yields.

`PresetDraft` holds the preset as a raw JSON dict, edited one field at a
time (`set_text("scheduler.warmup", "10%")`). `evaluate()` runs the one
validator (`modules.config.validate_preset`, then the step plan inside
`modules.preview.build_preview`) and returns a `PreviewState`: the new
preview, or the validator's message and the key to mark, together with the
last valid preview, which the view keeps showing. Images are counted by an
`ImageCounter` (off the GUI thread, cached per folder), so an edit never
walks the dataset again.

Load and save use the same JSON as `scripts/train.py` (`modules.config`);
the curve exports are the CLI's (`LrCurve.write_csv`, `ui.curve_plot`).
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.config import Preset, migrate, read_preset_file, save_preset, validate_preset
from modules.errors import ConfigError
from modules.preview import Preview, build_preview
from ui.controllers.fields import ALL_FIELDS, PARAM_GROUP_FIELDS, FieldSpec, format_value, parse_text
from ui.controllers.image_counter import ImageCounter

DEFAULTS = Preset().to_json_dict()
PIECEWISE_EXAMPLE = [[0, 1.0], ["50%", 0.1]]
# A type that cannot run without a field gets a starting value when the user switches to it.
REQUIRED_FOR_TYPE = {"sine": ("scheduler.period", "1 epochs"), "piecewise_constant": ("scheduler.steps",
                                                                                        PIECEWISE_EXAMPLE)}


@dataclass(frozen=True)
class PreviewState:
    """What the preview shows after an edit.

    `preview` is the newest valid preview (None before the first one);
    `fresh` says whether it is the preview of the draft as it is now. When
    the draft is invalid, `error` is the validator's line and `error_key`
    the dotted key to mark (None when no single field is to blame).
    """

    preview: Preview | None
    fresh: bool
    error: str | None = None
    error_key: str | None = None
    counting: str | None = None  # the folder being counted, while the preview waits for it
    image_count: int | None = None
    preset: Preset | None = None


def _split(key: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def _get(tree: Any, key: str, default: Any = None) -> Any:
    node = tree
    for part in _split(key):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return default
    return node


class PresetDraft:
    def __init__(self, raw: dict | None = None, counter: ImageCounter | None = None):
        self.counter = counter or ImageCounter()
        self.raw: dict = migrate(copy.deepcopy(raw)) if raw is not None else {"version": 1}
        self.path: Path | None = None
        self.last_valid: Preview | None = None
        self.revision = 0

    # --- reading -----------------------------------------------------------

    def value(self, key: str) -> Any:
        """The draft's value for `key`, or the default when the preset leaves it out."""
        missing = object()
        found = _get(self.raw, key, missing)
        return _get(DEFAULTS, key) if found is missing else found

    def text(self, key: str) -> Any:
        """What the field `key` shows (a bool for check boxes)."""
        return format_value(ALL_FIELDS[key], self.value(key))

    @property
    def schedule_type(self) -> str:
        return str(self.value("scheduler.type"))

    def groups(self) -> list[dict]:
        """The named parameter groups as the editor shows them: name, match and lr texts."""
        groups = self.value("optimizer.param_groups") or []
        return [
            {field: format_value(spec, group.get(field) if isinstance(group, dict) else None)
             for field, spec in PARAM_GROUP_FIELDS.items()}
            for group in groups
        ]

    # --- editing -----------------------------------------------------------

    def set_value(self, key: str, value: Any) -> None:
        """Set a JSON value at a dotted key (sections and list items are created as needed)."""
        parts = _split(key)
        node = self.raw
        for part, following in zip(parts[:-1], parts[1:]):
            child = node[part] if (isinstance(node, list) or part in node) else None
            if child is None:
                child = [] if isinstance(following, int) else {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        self.revision += 1

    def set_text(self, key: str, text: Any) -> None:
        """Record what the user typed into field `key` (validated by `evaluate`)."""
        spec: FieldSpec = ALL_FIELDS[key]
        self.set_value(key, parse_text(spec, text))
        if key == "scheduler.type" and text in REQUIRED_FOR_TYPE:
            required, example = REQUIRED_FOR_TYPE[text]
            if self.value(required) is None:
                self.set_value(required, copy.deepcopy(example))

    def _groups_raw(self) -> list:
        groups = self.value("optimizer.param_groups")
        groups = copy.deepcopy(groups) if isinstance(groups, list) else []
        self.set_value("optimizer.param_groups", groups)
        return groups

    def set_group_text(self, index: int, field: str, text: str) -> None:
        self._groups_raw()
        self.set_value(f"optimizer.param_groups.{index}.{field}", parse_text(PARAM_GROUP_FIELDS[field], text))

    def add_group(self) -> None:
        groups = self._groups_raw()
        names = {group.get("name") for group in groups if isinstance(group, dict)}
        number = 1
        while f"group{number}" in names:
            number += 1
        groups.append({"name": f"group{number}", "match": "attentions", "lr": self.value("optimizer.lr")})
        self.revision += 1

    def remove_group(self, index: int) -> None:
        groups = self._groups_raw()
        del groups[index]
        self.revision += 1

    # --- the one validator ---------------------------------------------------

    def evaluate(self) -> PreviewState:
        """Validate the draft and build its preview; keep the last valid preview on error."""
        try:
            preset = validate_preset(self.raw)
        except ConfigError as error:
            return PreviewState(self.last_valid, False, str(error), error.key)
        count, sizes = None, None
        if preset.data.path:
            lookup = self.counter.lookup_sizes if preset.data.buckets else self.counter.lookup
            found = lookup(preset.data.path)
            if found is None:
                return PreviewState(self.last_valid, False, counting=preset.data.path, preset=preset)
            if isinstance(found, ConfigError):
                return PreviewState(self.last_valid, False, str(found), found.key, preset=preset)
            if isinstance(found, list):  # buckets: every image's size
                count, sizes = len(found), found
            else:
                count = found
        try:
            # num_images None with no data.path: the plan raises "data.path: is not set".
            preview = build_preview(preset, count, sizes)
        except ConfigError as error:
            return PreviewState(self.last_valid, False, str(error), error.key, image_count=count, preset=preset)
        self.last_valid = preview
        return PreviewState(preview, True, image_count=count, preset=preset)

    def wait_for_images(self) -> PreviewState:
        """Evaluate, waiting for a running image count first (scripts and tests)."""
        state = self.evaluate()
        while state.counting:
            self.counter.wait()
            state = self.evaluate()
        return state

    def current_preview(self) -> Preview:
        """The preview of the draft exactly as it is, or ConfigError naming what is wrong."""
        state = self.wait_for_images()
        if state.error:
            raise ConfigError(state.error, state.error_key)
        return state.preview

    # --- files ---------------------------------------------------------------

    def load(self, path: str | Path) -> None:
        """Replace the draft with a preset file (the same JSON `scripts/train.py` reads).

        A file that is not a preset raises ConfigError and leaves the draft as it was;
        a preset with a bad value is loaded and its problem shown like any edit's.
        """
        raw = migrate(read_preset_file(path))
        self.raw = raw
        self.path = Path(path)
        self.revision += 1

    def save(self, path: str | Path) -> None:
        """Write the draft as a full, validated preset (refused with the validator's line if invalid)."""
        preview = self.current_preview()
        save_preset(preview.preset, path)
        self.path = Path(path)

    def export_csv(self, path: str | Path) -> None:
        """The curve as `step,lr/<group>...`, exactly what `scripts/preview.py --csv` writes."""
        self.current_preview().curve.write_csv(path)

    def export_png(self, path: str | Path, dark: bool = False) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ui.curve_plot import draw_preview

        preview = self.current_preview()
        figure = Figure(figsize=(10, 4.8), dpi=110, layout="constrained")
        FigureCanvasAgg(figure)
        draw_preview(figure, preview, dark=dark)
        if preview.plan.warnings:
            figure.supxlabel("warnings: " + "; ".join(preview.plan.warnings), fontsize="x-small",
                             color="#a04000", wrap=True)
        figure.savefig(path)
