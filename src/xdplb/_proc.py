"""Process helpers shared by the daemon and the lab."""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Is `pid` a running process? A zombie counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
