"""Where things live under FLYWHEEL_HOME.

    flywheel.db          the one SQLite database (WAL mode)
    adapters/<id>/       published adapters; immutable once renamed into place
    adapters/.staging/   adapters being written; never read by the server
    models/<key>/        base models converted to plain safetensors (e.g. from GGUF)
    runs/<id>/           a training run's scratch space: checkpoints, logs
    vllm.log             the output of a vLLM server that `flywheel serve` started
    page.secret          the key of what the page keeps in the browser (the open chat)
"""

import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DEFAULT_HOME = "./flywheel-data"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        """`--home` if given, else $FLYWHEEL_HOME, else ./flywheel-data; created if missing."""
        root = Path(home or os.environ.get("FLYWHEEL_HOME") or DEFAULT_HOME).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def db_path(self) -> Path:
        """The SQLite database file, `flywheel.db`."""
        return self.root / "flywheel.db"

    @property
    def adapters_dir(self) -> Path:
        """The folder of published adapters, `adapters/`."""
        return self.root / "adapters"

    @property
    def staging_dir(self) -> Path:
        """Where adapters are written before they are published, `adapters/.staging/`."""
        return self.adapters_dir / ".staging"

    @property
    def models_dir(self) -> Path:
        """Base models converted to plain safetensors, `models/`."""
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        """Training runs' scratch space (checkpoints, logs), `runs/`."""
        return self.root / "runs"

    def page_secret(self) -> str:
        """The key Gradio encrypts the page's browser storage with, made once and kept (only
        the owner may read it): a restarted server still reads what pages stored before."""
        path = self.root / "page.secret"
        if not path.is_file():
            write_atomic(path, secrets.token_urlsafe(32), mode=0o600)
        return path.read_text().strip()


@contextmanager
def folder_atomically(target: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside `target` to fill; when the block ends without an error it is
    renamed to `target`, so a reader (or a crash) sees the whole folder or none. `replace`:
    a folder already at `target` is replaced (otherwise the rename fails). The temporary
    name carries the process id: two processes writing one target never touch each other's."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if replace:
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Write `text` to `path` through a temporary file and a rename: a reader (or a crash)
    sees the old file or the whole new one, never half of it. `mode`: the file's permissions,
    set before the rename (0o600: a secret no one else may read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    if mode is not None:
        tmp.chmod(mode)
    os.replace(tmp, path)
    return path
