"""Advisory file locks that let several processes share one output_dir safely: `--fold 0` and `--fold 1` started
together (the README's "one fold per machine"), or a second copy of a run started by mistake.

A lock is an `flock` on a small file, so it is released by the kernel when its process ends, however it ends
(SIGKILL included): there is never a stale lock to clear by hand. Where `fcntl` does not exist (Windows) the
locks do nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "exclusive",
    "exclusive_all",
]


try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _open_lock_file(path: str) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _holder(path: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as handle:
            return f" (pid {int(handle.read().strip())})"
    return ""


@contextlib.contextmanager
def exclusive(path: str, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block. `wait=False`: if another process holds it, refuse at once
    with a message naming `what` and the holder's pid; `wait=True`: wait for it (short critical sections)."""
    if fcntl is None:
        yield
        return
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise PipelineError(
                f"{what} is in use by another process{_holder(path)}; wait for it to finish, or use another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def exclusive_all(paths_and_names: list[tuple[str, str]]) -> Iterator[None]:
    """Several non-waiting locks taken together (e.g. every fold a run will train); all or none."""
    with contextlib.ExitStack() as stack:
        for path, what in paths_and_names:
            stack.enter_context(exclusive(path, what))
        yield
