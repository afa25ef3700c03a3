"""One-line messages for the errors a command reports instead of a traceback."""

from __future__ import annotations

import errno
import os
import re

from pipeline.checkpoints import first_line

__all__ = ["first_line", "os_errno", "store_write_error"]

_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)  # pyarrow's OSErrors carry it in the text

_WHY = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def os_errno(exc: OSError) -> int | None:
    """The error number of `exc`, from the exception or, for pyarrow's errors, from its text."""
    if exc.errno is not None:
        return exc.errno
    found = _ERRNO_IN_TEXT.findall(str(exc))
    return int(found[-1]) if found else None


def store_write_error(exc: OSError, store: str | os.PathLike, *, resumable: bool = True) -> str:
    """What went wrong writing to the store at `store`, and what to do, on one line."""
    code = os_errno(exc)
    why = _WHY.get(code) if code is not None else None
    if why is None:
        why = first_line(exc)
    elif exc.filename:
        why = f"{why} ({exc.filename})"
    text = f"cannot write to the store {os.fspath(store)}: {why}"
    if resumable and code in _NO_SPACE:
        text += "; free some space and rerun the same command: it resumes from the last whole batch"
    elif resumable and code in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += "; give a writable --store, or rerun where this one is writable: the run resumes"
    return text
