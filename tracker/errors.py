"""Errors shared by every package of clusterprobe."""


class UsageError(Exception):
    """Bad input from the user (unknown name, missing file, malformed value).

    The message is one line naming the bad value and what would be valid; the
    CLI prints it and exits with status 2. Raise it before anything is stored.
    """


def error_line(exc: BaseException, limit: int = 1000) -> str:
    """One line: "Type: message", newlines folded, cut to ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, choices, n: int = 3) -> str:
    """`` (did you mean a, b?)`` naming the choices closest to a mistyped ``name``, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def interrupted_exit(exc: BaseException) -> int:
    """Exit status of a command stopped by ``exc``: 128 + the signal's number, the shell's
    convention (130 for Ctrl-C; 143 for SIGTERM, raised as ``tracking.Terminated``)."""
    import signal

    return 128 + int(getattr(exc, "signum", signal.SIGINT))
