"""The identity of a step plan: what a resumed run must share with the run that wrote the checkpoint.

`plan_identity(plan)` is JSON-ready (lists, not tuples), so a stored identity compares equal to a
fresh one; `fingerprint` is the first 16 hex digits of its SHA-256; `describe_changes` says what
differs between two identities, one readable line per changed field.
"""

import hashlib
import json

from modules.config.preset import DEFAULT_GROUP_NAME
from modules.schedule.shapes import ResolvedSchedule, identity_fields

# Schedule fields added after plans were first stored in checkpoints: left out of the identity
# while empty, so a checkpoint written before they existed still resumes.
_LATER_SCHEDULE_FIELDS = ("function", "function_sha256", "phases")


def schedule_identity(schedule: ResolvedSchedule) -> dict:
    identity = identity_fields(schedule)
    for name in _LATER_SCHEDULE_FIELDS:
        if not identity[name]:
            del identity[name]
    return identity


def plan_identity(plan) -> dict:
    """The identity of a `StepPlan` (JSON-ready)."""
    buckets = {"buckets": [list(bucket) for bucket in plan.buckets]} if plan.buckets else {}
    fields = {
        **buckets,
        "images": plan.num_images,
        "repeats": plan.repeats,
        "batch_size": plan.batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "num_processes": plan.num_processes,
        "drop_last": plan.drop_last,
        "epochs": plan.requested_epochs if plan.max_steps is None else None,
        "max_steps": plan.max_steps,
        "total_steps": plan.total_steps,
        # Only when set, so plans without text-encoder training keep the identity they always had.
        **({"text_encoder_stop_steps": plan.text_encoder_stop_steps}
           if plan.text_encoder_stop_steps is not None else {}),
        "schedule": schedule_identity(plan.schedule),
        **concepts_identity(plan),
    }
    return json.loads(json.dumps(fields))


def concepts_identity(plan) -> dict:
    """{"concepts": [[name, type, images, repeats, samples, samples per epoch, loss weight], ...]} of the
    train and regularization concepts; {} for the one concept of data.path read flat, so plans of one
    folder keep the identity they always had."""
    rows = [row for row in plan.concepts if row.type != "validation"]
    if len(rows) == 1 and rows[0].key == "data.path" and rows[0].kohya_folder is None:
        return {}
    return {"concepts": [[row.name, row.type, row.images, row.repeats, row.samples, row.samples_per_epoch,
                          row.loss_weight] for row in rows]}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def describe_changes(old_identity: dict, new_identity: dict) -> list[str]:
    """Human-readable differences between two plan identities, one per changed field.

    Identities may carry "learning_rates" (group -> base LR, `LrCurve.identity`): a changed LR is a
    plan change like any other.
    """
    changes = []
    for key in sorted(set(old_identity) | set(new_identity)):
        old, new = old_identity.get(key), new_identity.get(key)
        if key == "learning_rates":
            if isinstance(old, dict) and isinstance(new, dict):  # checkpoints older than this field lack it
                changes.extend(_learning_rate_changes(old, new))
        elif key == "schedule" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    changes.append(f"scheduler {name}: {old.get(name)!r} -> {new.get(name)!r}")
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def _learning_rate_changes(old: dict, new: dict) -> list[str]:
    changes = []
    for name in [*old, *(name for name in new if name not in old)]:
        if old.get(name) != new.get(name):
            label = "optimizer.lr" if name == DEFAULT_GROUP_NAME else f"lr of group '{name}'"
            changes.append(f"{label}: {old.get(name)!r} -> {new.get(name)!r}")
    return changes
