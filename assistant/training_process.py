"""Starting `flywheel train` in a process of its own: from the admin page's Train now, the
nightly schedule and the learning bench. The server never trains in its own process: a run
takes minutes to hours and its own memory, and the server keeps answering meanwhile."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from storage import Home


def start_training(home: Home, args: Sequence[str], log_path: Path, niceness: int = 0,
                   detached: bool = False) -> subprocess.Popen:
    """`flywheel train --home HOME ARGS...`, its output in `log_path`. `niceness`: a lower
    CPU (and idle I/O) priority than the caller; `detached`: in a session of its own, so it
    outlives the caller (a server restarted during a run)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "flywheel.cli", "train", "--home", str(home.root), *args]
    with open(log_path, "w") as log:  # the child has its own copy of the file
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=detached,
                                preexec_fn=_lower_priority(niceness) if niceness else None)


def _lower_priority(niceness: int):
    def apply() -> None:  # runs in the child before it starts Python
        os.nice(niceness)
        try:
            import psutil
            psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
        except (ImportError, AttributeError, OSError):
            pass  # I/O priority is a nicety where the platform lacks it
    return apply
