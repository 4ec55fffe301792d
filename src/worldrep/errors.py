"""The one exception type users see: a clear message, exit code 2 at the CLI."""


class WorldrepError(Exception):
    """Bad input or an impossible request. The message names what is wrong and what is allowed."""


def choices(allowed) -> str:
    return ", ".join(repr(a) for a in allowed)
