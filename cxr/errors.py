"""The one exception type for bad user input; CLIs turn it into a one-line message and exit code 2."""


class InputError(ValueError):
    """Bad input: the message names the problem and the fix."""
