"""Dataset checks that need no model: run by the step plan whenever it lists the dataset itself.

`check_dataset(preset)` raises ConfigError (one line naming the key) for what would stop training
and returns warnings for what the user should know; the plan adds them to its warnings, so the
preview, the app and the trainer say the same thing.
"""


def check_dataset(preset) -> list[str]:
    """ConfigError for a dataset training would refuse; warnings (strings) otherwise."""
    return []
