"""data.validation_split (SPEC §11): held out by content and name, stable as images come and go; the plan
counts the rest."""

import shutil

import pytest

from modules.config.preset import validate_preset
from modules.data.concepts import resolve_concepts
from modules.data.validation_split import held_out_fraction, split_files
from modules.schedule.preview import build_preview
from modules.schedule.step_plan import build_step_plan
from tests.conftest import make_images


def preset_for(folder, split, **output):
    return validate_preset({"model": {"config": "tiny", "resolution": 8},
                            "data": {"path": str(folder), "validation_split": split},
                            "output": {"dir": str(folder.parent / "out"), **output}})


def held_names(folder, split):
    (concept,) = resolve_concepts(preset_for(folder, split).data)
    return {path.rsplit("/", 1)[1] for path in concept.held_out}, concept


def test_the_held_out_images_are_those_below_the_split_and_the_plan_counts_the_rest(tmp_path):
    folder = make_images(tmp_path / "images", 40, size=12)
    held, concept = held_names(folder, 0.25)
    fractions = {path.name: held_out_fraction(str(path)) for path in folder.glob("*.png")}
    assert held == {name for name, fraction in fractions.items() if fraction < 0.25}
    assert 0 < len(held) < 40 and concept.num_images == 40 - len(held)
    assert not set(concept.files) & set(concept.held_out)
    plan = build_step_plan(preset_for(folder, 0.25))
    assert plan.num_images == 40 - len(held) and plan.validation_images == len(held)
    assert plan.concepts[0].held_out == len(held)


def test_adding_images_moves_no_other_image_in_or_out(tmp_path):
    folder = make_images(tmp_path / "images", 30, size=12)
    before, _ = held_names(folder, 0.3)
    more = make_images(tmp_path / "more", 20, size=12, seed=7)
    for index, path in enumerate(sorted(more.glob("*.png"))):
        shutil.copy(path, folder / f"new_{index}.png")
    after, _ = held_names(folder, 0.3)
    assert {name for name in after if not name.startswith("new_")} == before
    assert after - before  # some of the new images are held out


def test_the_choice_follows_the_content_not_the_listing_order(tmp_path):
    folder = make_images(tmp_path / "images", 12, size=12)
    paths = sorted(str(path) for path in folder.glob("*.png"))
    kept, held = split_files(paths, 0.4)
    reversed_kept, reversed_held = split_files(paths[::-1], 0.4)
    assert {paths[index] for index in held} == {paths[::-1][index] for index in reversed_held}
    assert split_files([], 0.3) == ([], []) and split_files(paths[:1], 0.0) == ([0], [])


def test_a_small_concept_holds_out_at_least_one_image_and_never_all(tmp_path):
    folder = make_images(tmp_path / "images", 2, size=12)
    fractions = sorted(held_out_fraction(str(path)) for path in folder.glob("*.png"))
    low_split = min(0.5, fractions[0] / 2) if fractions[0] > 0 else 0.01
    held, concept = held_names(folder, low_split)
    assert len(held) == 1 and concept.num_images == 1
    one = make_images(tmp_path / "one", 1, size=12)
    held, concept = held_names(one, 0.5)
    assert held == set() and concept.num_images == 1


def test_the_preview_lists_validation_and_what_is_set_aside(tmp_path):
    folder = make_images(tmp_path / "images", 20, size=12)
    lines = "\n".join(build_preview(preset_for(folder, 0.3, validate_every="1 epochs")).report_lines())
    plan = build_step_plan(preset_for(folder, 0.3, validate_every="1 epochs"))
    assert f"validation at     {plan.steps_per_epoch} (every {plan.steps_per_epoch} steps and the last step)" in lines
    assert f"over {plan.validation_images} images" in lines
    idle = "\n".join(build_preview(preset_for(folder, 0.3)).report_lines())
    assert f"none (output.validate_every is not set; {plan.validation_images} images set aside)" in idle


@pytest.mark.parametrize("split", [-0.1, 0.6])
def test_a_split_outside_0_to_half_is_refused(tmp_path, split):
    from modules.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        preset_for(tmp_path / "images", split)
    assert error.value.key == "data.validation_split"
