"""How the plan's warnings read (SPEC §13's English fix): counts agree with their verbs."""

import pytest

from modules.config.preset import validate_preset
from modules.schedule.step_plan import build_step_plan


def bucket_preset(tmp_path, batch_size: int):
    return validate_preset({
        "model": {"config": "tiny", "resolution": 16},
        "data": {"path": str(tmp_path), "buckets": True, "bucket_step": 8, "bucket_max_aspect": 4},
        "training": {"epochs": 1, "batch_size": batch_size},
    })


@pytest.mark.parametrize("images, batch_size, expected", [
    (3, 2, "1 repeated sample fills the last micro-batch of buckets"),
    (1, 3, "2 repeated samples fill the last micro-batch of buckets"),
])
def test_repeated_samples_that_fill_a_bucket_read_as_english(tmp_path, images, batch_size, expected):
    plan = build_step_plan(bucket_preset(tmp_path, batch_size), image_sizes=[(16, 16)] * images)
    assert any(warning.startswith(expected) for warning in plan.warnings), plan.warnings
