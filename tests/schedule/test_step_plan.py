"""The step plan (SPEC §1) against a plain simulation of the data loader.

The expected counts are not computed with the plan's formula: `simulate`
deals the samples of an epoch into global micro-batches of B * W samples
(dropping or padding the short last one), then walks the micro-batches and
closes an optimizer step every A micro-batches and at the end of the epoch.
"""

import itertools

import pytest

from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.schedule.preview import build_preview
from modules.schedule.step_plan import MAX_TOTAL_STEPS, build_step_plan, describe_changes


def preset_for(**sections):
    raw = {"data": {"path": "unused"}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate_preset(raw)


def simulate(images, repeats, batch, processes, drop_last, accumulation, epochs=None, max_steps=None):
    """Walk one epoch the way the loader and the accumulation loop do; return a dict of counts."""
    samples = list(range(images * repeats))
    global_batch = batch * processes
    micro_batches = []
    current = []
    for sample in samples:
        current.append(sample)
        if len(current) == global_batch:
            micro_batches.append(current)
            current = []
    if current and not drop_last:
        micro_batches.append(current)  # padded with repeated samples by the sampler
    steps_per_epoch = 0
    window = 0
    for _ in micro_batches:
        window += 1
        if window == accumulation:
            steps_per_epoch += 1
            window = 0
    if window:  # the partial window is flushed at the epoch's end
        steps_per_epoch += 1
    if max_steps is not None:
        total = max_steps
    else:
        total = 0
        for _ in range(epochs):
            total += steps_per_epoch
    return {
        "samples": len(samples),
        "micro_batches": len(micro_batches),
        "steps_per_epoch": steps_per_epoch,
        "total": total,
        "partial_window": window,
    }


CASES = [
    (images, repeats, batch, processes, drop_last, accumulation, epochs)
    for images, accumulation, epochs, drop_last, processes in itertools.product(
        (1, 6, 7, 25), (1, 2, 3), (1, 2, 3), (False, True), (1, 2, 8)
    )
    for repeats, batch in ((1, 1), (3, 2))
]


@pytest.mark.parametrize("images,repeats,batch,processes,drop_last,accumulation,epochs", CASES)
def test_plan_matches_simulation(images, repeats, batch, processes, drop_last, accumulation, epochs):
    expected = simulate(images, repeats, batch, processes, drop_last, accumulation, epochs=epochs)
    preset = preset_for(
        data={"repeats": repeats, "drop_last": drop_last},
        training={
            "epochs": epochs,
            "batch_size": batch,
            "num_processes": processes,
            "gradient_accumulation_steps": accumulation,
        },
        output={"checkpoint_every": None},
    )
    if expected["micro_batches"] == 0:
        with pytest.raises(ConfigError) as raised:
            build_step_plan(preset, num_images=images)
        assert raised.value.key == "data.drop_last"
        return
    plan = build_step_plan(preset, num_images=images)
    assert plan.samples_per_epoch == expected["samples"]
    assert plan.micro_batches_per_epoch == expected["micro_batches"]
    assert plan.steps_per_epoch == expected["steps_per_epoch"]
    assert plan.total_steps == expected["total"]
    assert plan.num_epochs == epochs
    assert list(plan.epoch_starts) == [epoch * expected["steps_per_epoch"] for epoch in range(epochs)]
    # Every micro-batch of the epoch belongs to exactly one optimizer step, in order.
    windows = [list(plan.micro_batch_window(step)) for step in range(plan.steps_per_epoch)]
    assert [index for window in windows for index in window] == list(range(expected["micro_batches"]))
    assert all(1 <= len(window) <= accumulation for window in windows)
    partial_warned = any("last optimizer step of each epoch holds" in warning for warning in plan.warnings)
    assert partial_warned == bool(expected["partial_window"])


@pytest.mark.parametrize(
    "images,accumulation,max_steps",
    [(7, 2, 1), (7, 2, 4), (7, 2, 9), (25, 3, 100), (1, 1, 5), (6, 3, 3)],
)
def test_max_steps_sets_the_total(images, accumulation, max_steps):
    expected = simulate(images, 1, 1, 1, False, accumulation, max_steps=max_steps)
    preset = preset_for(
        training={"epochs": None, "max_steps": max_steps, "gradient_accumulation_steps": accumulation},
        output={"checkpoint_every": None},
    )
    plan = build_step_plan(preset, num_images=images)
    assert plan.total_steps == max_steps
    assert plan.steps_per_epoch == expected["steps_per_epoch"]
    # The epoch count shown is the number of epochs the run touches.
    touched = 0
    remaining = max_steps
    while remaining > 0:
        touched += 1
        remaining -= expected["steps_per_epoch"]
    assert plan.num_epochs == touched
    ends_mid_epoch = max_steps % expected["steps_per_epoch"] != 0
    assert any("partway through epoch" in warning for warning in plan.warnings) == ends_mid_epoch


def test_max_steps_overrides_epochs_with_a_warning():
    plan = build_step_plan(preset_for(training={"epochs": 3, "max_steps": 5}), num_images=7)
    assert plan.total_steps == 5
    assert any("overrides training.epochs" in warning for warning in plan.warnings)


@pytest.mark.parametrize(
    "warmup,steps_per_epoch_images,epochs,expected",
    [
        (5, 7, 3, 5),  # an integer is optimizer steps
        ("5", 7, 3, 5),
        ("5 steps", 7, 3, 5),
        ("1 epochs", 7, 3, 7),  # batch 1, accumulation 1: U = 7
        ("0.5 epochs", 7, 3, 4),  # 3.5 rounds up
        ("1.5 epochs", 7, 3, 11),  # 10.5 rounds up
        ("10%", 7, 3, 2),  # 2.1
        ("50%", 5, 1, 3),  # 2.5 rounds up (not to even)
        ("29%", 25, 2, 15),  # 14.5: exactly a half, also in decimal
    ],
)
def test_warmup_durations_in_optimizer_steps(warmup, steps_per_epoch_images, epochs, expected):
    plan = build_step_plan(
        preset_for(training={"epochs": epochs}, scheduler={"type": "linear", "warmup": warmup}),
        num_images=steps_per_epoch_images,
    )
    assert plan.warmup_steps == expected


def test_epoch_durations_count_optimizer_steps_not_micro_batches():
    # 7 images, batch 1, accumulation 2: 7 micro-batches -> 4 optimizer steps per epoch.
    plan = build_step_plan(
        preset_for(
            training={"epochs": 3, "gradient_accumulation_steps": 2},
            scheduler={"type": "cosine", "warmup": "1 epochs"},
            output={"checkpoint_every": "1 epochs", "sample_every": "0.5 epochs"},
        ),
        num_images=7,
    )
    assert plan.steps_per_epoch == 4
    assert plan.warmup_steps == 4
    assert plan.checkpoint_steps == (4, 8, 12)  # 12 is also the last step: listed once
    assert plan.sample_steps == (2, 4, 6, 8, 10, 12)


@pytest.mark.parametrize("every,total", [("2 epochs", 24), (5, 24), ("25%", 24), (7, 7), ("3 epochs", 12)])
def test_checkpoint_steps_are_every_interval_up_to_the_end(every, total):
    # 7 images, accumulation 2 -> 4 steps per epoch.
    plan = build_step_plan(
        preset_for(
            training={"epochs": None, "max_steps": total, "gradient_accumulation_steps": 2},
            output={"checkpoint_every": every},
        ),
        num_images=7,
    )
    interval = {"2 epochs": 8, "3 epochs": 12, "25%": 6}.get(every, every)
    expected = [step for step in range(1, plan.total_steps + 1) if step % interval == 0 or step == plan.total_steps]
    assert list(plan.checkpoint_steps) == expected  # the last step is always a checkpoint (training writes one)
    assert len(plan.checkpoint_steps) == len(expected) and plan.checkpoint_steps[-1] == plan.total_steps
    assert all(step in plan.checkpoint_steps for step in expected)
    assert not any(step in plan.checkpoint_steps for step in range(plan.total_steps + 2) if step not in expected)


def test_no_checkpoint_interval_means_only_the_final_checkpoint():
    plan = build_step_plan(preset_for(output={"checkpoint_every": None}), num_images=7)
    assert plan.checkpoint_steps == (plan.total_steps,)
    report = build_preview(preset_for(output={"checkpoint_every": None}), num_images=7).report_lines()
    assert f"  checkpoints at    {plan.total_steps} (the last step)" in report


def test_preview_lists_the_final_checkpoint_with_the_periodic_ones():
    preset = preset_for(training={"epochs": None, "max_steps": 10}, output={"checkpoint_every": 4})
    assert "  checkpoints at    4, 8, 10 (every 4 steps and the last step)" in build_preview(
        preset, num_images=7).report_lines()


def test_warmup_as_long_as_the_run_is_refused():
    with pytest.raises(ConfigError) as raised:
        build_step_plan(preset_for(training={"epochs": 1}, scheduler={"type": "linear", "warmup": 7}), num_images=7)
    assert raised.value.key == "scheduler.warmup"
    assert "7" in str(raised.value)


def test_cycle_boundaries_of_hard_restarts():
    # T = 12, Wu = 0, 4 cycles of 3 steps: restarts at 3, 6, 9.
    plan = build_step_plan(
        preset_for(training={"epochs": 12}, scheduler={"type": "cosine_with_hard_restarts", "cycles": 4}),
        num_images=1,
    )
    assert plan.cycle_starts == [3, 6, 9]


def test_sine_cycle_boundaries_follow_the_period():
    plan = build_step_plan(
        preset_for(training={"epochs": 30}, scheduler={"type": "sine", "period": 8, "warmup": 2}), num_images=1
    )
    assert plan.cycle_starts == [10, 18, 26]


@pytest.mark.parametrize(
    "scheduler,training,fragment",
    [
        ({"type": "sine", "period": 50}, {"epochs": 20}, "longer than the run"),
        ({"type": "sine", "period": 5}, {"epochs": 20}, "is odd"),
        ({"type": "linear", "warmup": 11}, {"epochs": 20}, "over half the run"),
        ({"type": "cosine_with_hard_restarts", "cycles": 15}, {"epochs": 20}, "fewer than 2 steps per cycle"),
        ({"type": "constant", "min_factor": 0.1}, {"epochs": 20}, "min_factor has no effect"),
    ],
)
def test_warnings_a_careful_user_wants(scheduler, training, fragment):
    plan = build_step_plan(preset_for(scheduler=scheduler, training=training), num_images=1)
    assert any(fragment in warning for warning in plan.warnings), plan.warnings


def test_a_clean_plan_has_no_warnings():
    plan = build_step_plan(
        preset_for(training={"epochs": 4, "gradient_accumulation_steps": 2}, scheduler={"type": "cosine", "warmup": 2}),
        num_images=8,
    )
    assert plan.warnings == ()


def test_position_and_fingerprint():
    preset = preset_for(training={"epochs": 3, "gradient_accumulation_steps": 2})
    plan = build_step_plan(preset, num_images=7)
    assert [plan.position(step) for step in (0, 3, 4, 11)] == [(0, 0), (0, 3), (1, 0), (2, 3)]
    assert build_step_plan(preset, num_images=7).fingerprint == plan.fingerprint
    changed = build_step_plan(preset, num_images=8)
    assert changed.fingerprint != plan.fingerprint
    assert "images: 7 -> 8" in describe_changes(plan.identity(), changed.identity())


def test_counts_the_dataset_folder(image_folder):
    plan = build_step_plan(validate_preset({"data": {"path": str(image_folder)}}))
    assert plan.num_images == 7


def test_unset_dataset_folder_is_named():
    with pytest.raises(ConfigError) as raised:
        build_step_plan(validate_preset({}))
    assert raised.value.key == "data.path"


# --- the longest plan ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("training, key", [
    ({"epochs": 1_000_000_000_000}, "training.epochs"),
    ({"epochs": 1_428_572}, "training.epochs"),  # 7 steps per epoch: 10,000,004 steps, just past the cap
    ({"epochs": None, "max_steps": 1_000_000_000}, "training.max_steps"),
    ({"epochs": None, "max_steps": MAX_TOTAL_STEPS + 1}, "training.max_steps"),
])
def test_a_plan_longer_than_the_cap_is_refused_before_anything_large_is_allocated(training, key):
    import tracemalloc

    preset = preset_for(training=training, output={"checkpoint_every": 1, "sample_every": 1})
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as raised:
            build_step_plan(preset, num_images=7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raised.value.key == key and "10,000,000" in str(raised.value) and "\n" not in str(raised.value)
    assert peak < 1_000_000  # bytes: refused on the numbers, no array or step list of that length exists


def test_a_plan_at_the_cap_keeps_its_checkpoint_and_sample_steps_small():
    import tracemalloc

    preset = preset_for(training={"epochs": None, "max_steps": MAX_TOTAL_STEPS},
                        output={"checkpoint_every": 1, "sample_every": 1})
    tracemalloc.start()
    try:
        plan = build_step_plan(preset, num_images=7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.total_steps == MAX_TOTAL_STEPS
    assert len(plan.checkpoint_steps) == len(plan.sample_steps) == MAX_TOTAL_STEPS
    assert 1 in plan.checkpoint_steps and MAX_TOTAL_STEPS in plan.checkpoint_steps
    assert MAX_TOTAL_STEPS + 1 not in plan.checkpoint_steps and 0 not in plan.sample_steps
    assert list(plan.checkpoint_steps[-2:]) == [MAX_TOTAL_STEPS - 1, MAX_TOTAL_STEPS]
    assert peak < 1_000_000  # bytes, against ~400 MB for ten million Python ints in a tuple


# --- piecewise boundaries past the end ------------------------------------------------------------------------------

def test_a_piecewise_boundary_past_the_end_of_the_run_is_a_warning():
    preset = preset_for(training={"epochs": 2}, scheduler={
        "type": "piecewise_constant", "steps": [[0, 1.0], [5, 0.5], ["1.5 epochs", 0.2], [14, 0.1], [100, 0.01]]})
    plan = build_step_plan(preset, num_images=7)  # 7 steps per epoch: T = 14, so steps 14 and 100 never come
    assert [warning for warning in plan.warnings if "scheduler.steps" in warning] == [
        "scheduler.steps: the boundary at step 14 (multiplier 0.1) is at or past the end of the run (14 steps): "
        "it and 1 more never take effect"]
    inside = preset_for(training={"epochs": 2}, scheduler={"type": "piecewise_constant", "steps": [[0, 1.0], [13, 0.5]]})
    assert not any("scheduler.steps" in warning for warning in build_step_plan(inside, num_images=7).warnings)
