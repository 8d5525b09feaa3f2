"""The EMA decay the preview draws and lists (SPEC §11): d_j = min(ema_decay, j / (9 + j)), one per update."""

import numpy as np
import pytest

from modules.config.preset import validate_preset
from modules.schedule.ema_decay import ema_decays
from modules.schedule.preview import build_preview, first_update_at


def test_updates_fall_after_every_multiple_and_follow_the_contract():
    steps, decays = ema_decays(10, 0.2, 3)
    assert list(steps) == [2, 5, 8]  # after optimizer steps 3, 6, 9 (1-based)
    assert list(decays) == [0.1, 2 / 11, 0.2]
    assert [len(part) for part in ema_decays(10, None)] == [0, 0]


@pytest.mark.parametrize("decay", [0.1, 0.5, 0.9, 0.95, 0.999, 0.9999])
def test_the_first_update_at_the_full_decay_matches_the_curve(decay):
    _, decays = ema_decays(200_000, decay)
    assert first_update_at(decay) == int(np.flatnonzero(decays >= decay)[0]) + 1


@pytest.mark.parametrize("every, decay, expected", [
    (1, 0.5, "reaches 0.5 after step 9; 24 updates (every 1 step)"),
    (2, 0.5, "reaches 0.5 after step 18; 12 updates (every 2 steps)"),
    (1, 0.9, "ends at 0.7273 (below ema_decay 0.9: the run is short for it); 24 updates"),
])
def test_the_preview_says_when_the_decay_is_reached(every, decay, expected):
    preset = validate_preset({"model": {"config": "tiny"}, "training": {"epochs": 6, "ema": True, "ema_decay": decay,
                                                                        "ema_update_every": every}})
    lines = build_preview(preset, num_images=4).report_lines()
    assert any(expected in line for line in lines), lines
