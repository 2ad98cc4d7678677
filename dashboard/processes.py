"""Process hygiene shared by every child the dashboard starts (runners, zygotes, work horses)."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent goes, so no orphan keeps migrating.

    PR_SET_PDEATHSIG follows the *thread* that forked this process: call it only in children
    of a process whose forking thread lives as long as it does. `parent`: the pid it must still
    have (the default: any but init), else the parent died before prctl took effect.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if (os.getppid() == 1) if parent is None else (os.getppid() != parent):
        os._exit(1)
