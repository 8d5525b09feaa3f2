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
