"""The one base of errors caused by what a user gave (config, data, model, cluster size).

The CLI prints these as a message with exit code 2, without a traceback; anything else is a bug
and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad input: the message names the key, file or row and what to change."""
