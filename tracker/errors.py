"""Errors shared by every package of clusterprobe."""


class UsageError(Exception):
    """Bad input from the user (unknown name, missing file, malformed value).

    The message is one line naming the bad value and what would be valid; the
    CLI prints it and exits with status 2. Raise it before anything is stored.
    """
