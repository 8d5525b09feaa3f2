"""The preset model (SPEC §3): partial overlays, overrides, round trip, and errors that name the key."""

import json

import pytest

from modules.config import preset as config
from modules.config.preset import (
    PRESET_VERSION,
    Preset,
    apply_overrides,
    load_preset,
    save_preset,
    validate_preset,
)
from modules.errors import ConfigError


def write(path, raw):
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_a_partial_preset_is_overlaid_on_the_defaults():
    preset = validate_preset({"training": {"batch_size": 4}, "scheduler": {"type": "cosine"}})
    defaults = Preset()
    assert preset.training.batch_size == 4
    assert preset.scheduler.type == "cosine"
    assert preset.training.gradient_accumulation_steps == defaults.training.gradient_accumulation_steps
    assert preset.optimizer == defaults.optimizer
    assert preset.version == PRESET_VERSION


def test_the_spec_field_names_exist():
    preset = Preset()
    for dotted in [
        "data.path", "data.repeats", "data.drop_last", "model.path", "model.config", "model.resolution",
        "training.epochs", "training.max_steps", "training.batch_size", "training.gradient_accumulation_steps",
        "training.num_processes", "training.seed", "training.device", "training.mixed_precision",
        "optimizer.type", "optimizer.lr", "optimizer.param_groups", "scheduler.type", "scheduler.warmup",
        "scheduler.warmup_start_factor", "scheduler.min_factor", "scheduler.cycles", "scheduler.power",
        "scheduler.period", "scheduler.timescale", "scheduler.decay", "scheduler.decay_shape", "scheduler.steps",
        "output.dir", "output.checkpoint_every", "output.keep_checkpoints", "output.sample_every",
    ]:
        section, key = dotted.split(".")
        assert hasattr(getattr(preset, section), key), dotted


def test_overrides_parse_json_values_and_fall_back_to_strings(tmp_path):
    path = write(tmp_path / "p.json", {"scheduler": {"type": "linear"}})
    preset = load_preset(path, [
        "training.batch_size=3", "scheduler.warmup=10%", "scheduler.type=cosine", "data.drop_last=true",
        "optimizer.lr=2e-4", "training.max_steps=null",
    ])
    assert preset.training.batch_size == 3
    assert preset.scheduler.warmup == "10%"
    assert preset.scheduler.type == "cosine"
    assert preset.data.drop_last is True
    assert preset.optimizer.lr == pytest.approx(2e-4)


def test_overrides_do_not_touch_the_original_dict():
    raw = {"training": {"batch_size": 2}}
    changed = apply_overrides(raw, ["training.batch_size=5", "scheduler.cycles=2"])
    assert raw == {"training": {"batch_size": 2}}
    assert changed == {"training": {"batch_size": 5}, "scheduler": {"cycles": 2}}


def test_the_resolved_preset_round_trips_through_json(tmp_path):
    preset = validate_preset({
        "data": {"path": "images", "repeats": 2},
        "optimizer": {"param_groups": [{"name": "attention", "match": "attn", "lr": 1e-5}]},
        "scheduler": {"type": "piecewise_constant", "steps": [[0, 1.0], ["50%", 0.1]], "warmup": "0.5 epochs"},
    })
    path = tmp_path / "resolved.json"
    save_preset(preset, path)
    written = json.loads(path.read_text())
    assert written["version"] == PRESET_VERSION
    assert set(written) == {"version", "model", "data", "training", "optimizer", "lora", "scheduler",
                            "output"}
    assert load_preset(path) == preset
    assert not list(tmp_path.glob("*.tmp"))


def test_group_names_and_base_lrs_are_in_optimizer_order():
    preset = validate_preset({"optimizer": {"lr": 3e-4, "param_groups": [
        {"name": "attention", "match": "attn", "lr": 1e-4}, {"name": "text", "match": "^text", "lr": 5e-5}]}})
    assert preset.optimizer.group_names == ["attention", "text", "unet"]
    assert preset.optimizer.base_lrs == [1e-4, 5e-5, 3e-4]


def test_migrations_run_one_version_at_a_time(monkeypatch):
    monkeypatch.setattr(config, "PRESET_VERSION", 3)
    monkeypatch.setattr(config, "MIGRATIONS", {
        1: lambda raw: {**{k: v for k, v in raw.items() if k != "schedule"}, "scheduler": {"type": raw["schedule"]}},
        2: lambda raw: {**raw, "training": {"batch_size": raw["training"]["batch"]}},
    })
    migrated = config.migrate({"version": 1, "schedule": "cosine", "training": {"batch": 4}})
    assert migrated == {"version": 3, "scheduler": {"type": "cosine"}, "training": {"batch_size": 4}}


ERRORS = [
    ({"trainig": {}}, "trainig", ["unknown key", "did you mean 'training'"]),
    ({"training": {"batch_sise": 2}}, "training.batch_sise", ["unknown key", "did you mean 'batch_size'"]),
    ({"scheduler": {"min_facter": 0.1}}, "scheduler.min_facter", ["did you mean 'min_factor'"]),
    ({"training": {"batch_size": "two"}}, "training.batch_size", ["integer", "two"]),
    ({"training": {"epochs": 1.5}}, "training.epochs", ["integer"]),
    ({"data": {"drop_last": "maybe"}}, "data.drop_last", ["boolean"]),
    ({"training": {"batch_size": 0}}, "training.batch_size", ["greater than or equal to 1"]),
    ({"optimizer": {"lr": -1}}, "optimizer.lr", ["greater than 0"]),
    ({"scheduler": {"min_factor": 1}}, "scheduler.min_factor", ["less than 1"]),
    ({"scheduler": {"type": "cosin"}}, "scheduler.type", ["must be one of", "'cosine'"]),
    ({"training": {"device": "tpu"}}, "training.device", ["'auto'", "'cpu'", "'cuda'"]),
    ({"scheduler": {"type": "cosine_with_hard_restarts", "cycles": 0.5}}, "scheduler.cycles", [">= 1"]),
    ({"scheduler": {"type": "cosine_with_hard_restarts", "cycles": 2.5}}, "scheduler.cycles", ["whole number"]),
    ({"optimizer": {"type": "adamw_schedule_free"}, "scheduler": {"type": "cosine"}}, "scheduler.type",
     ["must be 'constant'", "adamw_schedule_free"]),
    ({"optimizer": {"type": "radam_schedule_free"}, "scheduler": {"warmup": 10}}, "scheduler.warmup", ["must be 0"]),
    ({"scheduler": {"warmup": "ten"}}, "scheduler.warmup", ["1.5 epochs"]),
    ({"output": {"checkpoint_every": "soon"}}, "output.checkpoint_every", ["epochs"]),
    ({"scheduler": {"type": "sine"}}, "scheduler.period", ["required"]),
    ({"scheduler": {"type": "piecewise_constant", "steps": [[5, 1.0]]}}, "scheduler.steps", ["first boundary"]),
    ({"scheduler": {"type": "piecewise_constant", "steps": [[0, 2.0]]}}, "scheduler.steps", ["[0, 1]"]),
    ({"optimizer": {"param_groups": [{"name": "a", "match": "(", "lr": 1}]}}, "optimizer.param_groups.0.match",
     ["regular expression"]),
    ({"optimizer": {"param_groups": [{"name": "unet", "match": "x", "lr": 1}]}}, "optimizer.param_groups",
     ["reserved"]),
    ({"training": {"epochs": None}}, "training.epochs", ["max_steps"]),
    ({"model": {"path": "m", "config": "tiny"}}, "model.path", ["not both"]),
    ({"version": 99}, "version", ["newer"]),
]


@pytest.mark.parametrize("raw,key,fragments", ERRORS, ids=[case[1] for case in ERRORS])
def test_errors_name_the_key_and_what_is_allowed(raw, key, fragments):
    with pytest.raises(ConfigError) as raised:
        validate_preset(raw)
    error = raised.value
    assert error.key == key
    text = str(error)
    assert text.startswith(key + ": ")
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text


def test_unknown_keys_list_the_allowed_keys():
    with pytest.raises(ConfigError) as raised:
        validate_preset({"scheduler": {"wormup": 5}})
    assert "did you mean 'warmup'" in str(raised.value)
    assert "allowed:" in str(raised.value) and "min_factor" in str(raised.value)


@pytest.mark.parametrize("text,fragment", [("training.batch_size", "KEY=VALUE"), ("batch_size=2", "section.key"),
                                           (".x=1", "section.key")])
def test_bad_override_syntax(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides({}, [text])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"training": {"batch_size": 2}}, ["training.batch_size.x=1"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"training\": ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_preset(bad)
    listed = write(tmp_path / "list.json", [1, 2])
    with pytest.raises(ConfigError, match="JSON object"):
        load_preset(listed)


def test_the_demo_preset_is_valid():
    from pathlib import Path

    preset = load_preset(Path(__file__).resolve().parents[2] / "training_presets" / "demo.json")
    assert preset.training.batch_size == 1
    assert preset.training.gradient_accumulation_steps == 2
    assert preset.scheduler.type == "cosine_with_hard_restarts"


def test_misspelt_value_suggests_the_nearest_allowed_one():
    with pytest.raises(ConfigError) as caught:
        validate_preset({"scheduler": {"type": "cosin"}})
    assert caught.value.key == "scheduler.type"
    assert "did you mean 'cosine'?" in str(caught.value)
    assert "cosine_with_hard_restarts" in str(caught.value)  # the allowed values are still listed


# --- values are taken as written -------------------------------------------------------------------------------------

NOT_COERCED = [
    ({"training": {"batch_size": True}}, "training.batch_size", "not a boolean"),
    ({"training": {"epochs": "3"}}, "training.epochs", "not a string"),
    ({"data": {"drop_last": "yes"}}, "data.drop_last", "true or false"),
    ({"data": {"drop_last": 1}}, "data.drop_last", "true or false"),
    ({"optimizer": {"lr": "1e-3"}}, "optimizer.lr", "not a string"),
    ({"optimizer": {"lr": float("inf")}}, "optimizer.lr", "finite"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr", "finite"),
    ({"optimizer": {"betas": [0.9, True]}}, "optimizer.betas", "not a boolean"),
    ({"optimizer": {"betas": [0.9, float("nan")]}}, "optimizer.betas.1", "finite"),
    ({"optimizer": {"param_groups": [{"name": "a", "match": "x", "lr": float("inf")}]}},
     "optimizer.param_groups.0.lr", "finite"),
    ({"scheduler": {"cycles": float("inf")}}, "scheduler.cycles", "finite"),
    ({"scheduler": {"warmup": float("inf")}}, "scheduler.warmup", "inf"),
    ({"scheduler": {"type": "piecewise_constant", "steps": [[0, 1.0], ["50%", True]]}}, "scheduler.steps",
     "not a boolean"),
    ({"training": {"seed": 2**64}}, "training.seed", str(2**64 - 1)),
    ({"training": {"max_grad_norm": float("inf")}}, "training.max_grad_norm", "finite"),
]


@pytest.mark.parametrize("raw,key,fragment", NOT_COERCED, ids=[f"{case[1]}-{index}" for index, case in
                                                              enumerate(NOT_COERCED)])
def test_values_are_never_coerced_and_never_infinite(raw, key, fragment):
    with pytest.raises(ConfigError) as raised:
        validate_preset(raw)
    assert raised.value.key == key and fragment in str(raised.value) and "\n" not in str(raised.value)


def test_integers_for_floats_and_json_lists_for_pairs_still_work(tmp_path):
    raw = {"optimizer": {"lr": 1, "betas": [0.9, 0.99]}, "training": {"max_steps": 1e6, "seed": 2**64 - 1},
           "scheduler": {"type": "piecewise_constant", "steps": [[0, 1], ["50%", 0.1]]}}
    preset = validate_preset(raw)
    assert preset.optimizer.lr == 1.0 and isinstance(preset.optimizer.lr, float)
    assert preset.optimizer.betas == (0.9, 0.99) and preset.training.max_steps == 1_000_000
    assert preset.scheduler.steps == [(0, 1.0), ("50%", 0.1)]
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"optimizer": {"betas": [0.8, 0.9]}}), encoding="utf-8")
    loaded = load_preset(path, ["scheduler.type=piecewise_constant", 'scheduler.steps=[[0, 1], ["1 epochs", 0.5]]',
                                "optimizer.betas=[0.85, 0.95]", "optimizer.lr=2"])
    assert loaded.optimizer.betas == (0.85, 0.95) and loaded.scheduler.steps[1] == ("1 epochs", 0.5)
    assert validate_preset({"optimizer": {"betas": (0.9, 0.98)}}).optimizer.betas == (0.9, 0.98)  # the app's tuples


@pytest.mark.parametrize("override, key", [("optimizer.lr=Infinity", "optimizer.lr"), ("optimizer.lr=NaN", "optimizer.lr"),
                                           ("optimizer.lr=inf", "optimizer.lr"), ("training.batch_size=true", "training.batch_size"),
                                           ("data.drop_last=yes", "data.drop_last")])
def test_overrides_are_as_strict_as_files(tmp_path, override, key):
    path = tmp_path / "preset.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_preset(path, [override])
    assert raised.value.key == key


@pytest.mark.parametrize("raw, key, hint", [
    ({"training": {"lr": 1e-3}}, "training.lr", "did you mean 'optimizer.lr'?"),
    ({"lr": 1e-3}, "lr", "did you mean 'optimizer.lr'?"),
    ({"optimizer": {"warmup": 5}}, "optimizer.warmup", "did you mean 'scheduler.warmup'?"),
    ({"training": {"warmpu": 5}}, "training.warmpu", "did you mean 'scheduler.warmup'?"),  # close, elsewhere
    ({"training": {"epoks": 5}}, "training.epoks", "did you mean 'epochs'?"),  # close, same section first
    ({"training": {"type": "x"}}, "training.type", "did you mean 'model.type' or 'optimizer.type' or 'scheduler.type'?"),
])
def test_a_key_in_the_wrong_section_names_the_section_it_belongs_to(raw, key, hint):
    with pytest.raises(ConfigError) as raised:
        validate_preset(raw)
    assert raised.value.key == key and f"unknown key; {hint}" in str(raised.value)


def test_a_utf8_byte_order_mark_at_the_start_of_a_preset_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"training": {"epochs": 4}}).encode())
    assert load_preset(path).training.epochs == 4


def test_dadapt_adam_refuses_safeguard_warmup_which_prodigy_has():
    assert validate_preset({"optimizer": {"type": "prodigy", "safeguard_warmup": True}}).optimizer.safeguard_warmup
    with pytest.raises(ConfigError) as raised:
        validate_preset({"optimizer": {"type": "dadapt_adam", "safeguard_warmup": True}})
    assert raised.value.key == "optimizer.safeguard_warmup" and "not an option of dadapt_adam" in str(raised.value)


def test_path_notes_name_the_working_folder_and_that_tilde_is_not_expanded(tmp_path, monkeypatch):
    from modules.config.paths import path_note

    monkeypatch.chdir(tmp_path)
    assert path_note(tmp_path / "images") == ""
    assert path_note("images") == f" (a relative path, looked for in '{tmp_path}')"
    note = path_note("~/images")
    assert f"looked for in '{tmp_path}'" in note and "'~' is not expanded: write '" in note
