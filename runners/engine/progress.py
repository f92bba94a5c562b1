"""The engine's one progress bar: tqdm on stderr, or a silent stand-in."""

from __future__ import annotations

import sys


class _NoProgress:
    """The stand-in for a progress bar when none is shown."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total: int, *, show: bool, desc: str, unit: str):
    """A tqdm bar on stderr that clears itself when done, or a silent stand-in.

    tqdm is imported only when the bar is shown (``--quiet`` and the tests never load it).
    """
    if not show:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
