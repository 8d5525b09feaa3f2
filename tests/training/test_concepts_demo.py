"""The concepts demo of `make demo` (training_presets/concepts_demo.json): two concepts and a
regularization folder, previewed and trained; TensorBoard's data/samples/<concept> equal the preview."""

from pathlib import Path

import pytest

from modules.config.preset import load_preset
from modules.schedule.preview import build_preview
from modules.training import train
from tests.training_helpers import one_thread, scalar_events  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "training_presets" / "concepts_demo.json"


def demo_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset's folders are relative to the repository, as `make demo` runs it
    return load_preset(DEMO, [f"output.dir={tmp_path / 'out'}", "training.device=cpu"])


def test_the_concepts_demo_lists_two_concepts_and_a_regularization_folder(tmp_path, monkeypatch):
    plan = build_preview(demo_preset(tmp_path, monkeypatch)).plan
    assert [(row.name, row.type) for row in plan.concepts] == [
        ("shapes", "train"), ("photos", "train"), ("terrain", "regularization")]
    assert [row.samples_per_epoch for row in plan.concepts] == [10, 8, 4] and plan.total_steps == 24
    assert not [warning for warning in plan.warnings if "concept" in warning]  # clean data: no data warning


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_concepts_demo_trains_and_logs_what_each_concept_trained(tmp_path, monkeypatch):
    preset = demo_preset(tmp_path, monkeypatch)
    plan = build_preview(preset).plan
    result = train(preset, progress_bar=False, log=lambda message: None)
    assert result.finished and result.completed_steps == plan.total_steps
    events = scalar_events(tmp_path / "out")
    last_steps = [epoch * plan.steps_per_epoch + plan.steps_per_epoch - 1 for epoch in range(plan.num_epochs)]
    # 22 samples fill 11 micro-batches of 2 exactly: each epoch trains each concept's samples once.
    for row in plan.concepts:
        assert events[f"data/samples/{row.name}"] == [(step, row.samples_per_epoch) for step in last_steps]
