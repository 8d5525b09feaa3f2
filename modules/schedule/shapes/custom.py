"""custom: the user's own function of the step (`scheduler.function`, see `modules.schedule.custom`)."""

from modules.schedule.custom import multipliers as evaluate_function, source_digest
from modules.schedule.shapes.base import Shape


class Custom(Shape):
    """f = values[k], the user's function called once on the whole plan when the plan is built.

    The checked values travel in the resolved schedule (`custom_values`), so the curve needs no
    other state: not a registry, not the file (the digest in the identity names the code that ran).
    """

    name = "custom"
    reads = ("function",)

    def resolve(self, scheduler, steps, total_steps, warmup_steps):
        function = scheduler.function
        digest = source_digest(function)
        # The one evaluation of the function (checked, cached): a bad function fails here, before training.
        values = evaluate_function(function, digest, total_steps)
        return {"function": function, "function_sha256": digest, "custom_values": values}

    def multipliers(self, schedule, k):
        if schedule.custom_values is None:
            raise ValueError(f"the schedule of {schedule.function!r} carries no values: build it with "
                             "modules.schedule.step_plan.build_step_plan")
        return schedule.custom_values[k]

    def warnings(self, schedule):
        peak = float(schedule.custom_values.max())
        if peak > 1:
            return [f"the custom schedule {schedule.function!r} rises to {peak:g} x the base LR (above 1)"]
        return []
