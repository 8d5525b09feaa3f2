"""User-facing errors.

`ConfigError` carries one plain line that names what is wrong and what is
allowed. Command-line entry points print it and exit with status 2; the GUI
shows it beside the field. Anything else escaping is a bug, not bad input.
"""


class ConfigError(ValueError):
    """Bad input from the user: a preset key, a dataset folder, a checkpoint.

    `key` is the dotted preset key when one is to blame (the GUI uses it to
    mark the field), else None.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        message = self.args[0]
        if self.key and not message.startswith(self.key):
            return f"{self.key}: {message}"
        return message


class PlanChangedError(ConfigError):
    """Resume refused: the checkpoint was written for a different plan.

    `changes` lists what differs (one readable line each) and `step` is the
    checkpoint's global_step, so each front end can say how to continue on
    the new plan in its own terms (the CLI's message names --rebase-schedule).
    """

    def __init__(self, checkpoint: str, changes: list[str], step: int):
        super().__init__(
            f"checkpoint '{checkpoint}' was written for a different plan: {'; '.join(changes)} "
            f"(use --rebase-schedule to continue at step {step} on the new plan)"
        )
        self.checkpoint = checkpoint
        self.changes = list(changes)
        self.step = step
