"""The one exception type a user can meet.

Every error that bad input can cause (a missing file, a typo in a recipe, an unknown model
name, an impossible label fraction) is raised as a :class:`MedzooError` whose message is one
line saying what is wrong and what to do. The CLI prints it as ``medzoo: error: ...`` and exits
with status 2, without a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations

import errno


class MedzooError(Exception):
    """A user-facing error: one line, what is wrong and what to do."""


# What a user can do about each disk error, by errno; anything else is reported by its strerror.
_DISK_CAUSES = {
    errno.ENOSPC: "the disk is full: free space and run again",
    errno.EDQUOT: "the disk quota is exceeded: free space and run again",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "permission denied: choose a location you may write to",
    errno.EPERM: "operation not permitted: choose a location you may write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another location",
    errno.EISDIR: "it is a folder, not a file: choose a file path",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the path is too long",
    errno.EIO: "the disk reported an I/O error: check the device",
    errno.ENOENT: "no such file or folder",
    errno.ELOOP: "too many symbolic links: give a plain path",
}
DISK_ERRNOS = frozenset(_DISK_CAUSES) | {errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.EXDEV}


def disk_error(err: OSError, doing: str) -> Exception:
    """A one-line :class:`~medzoo.errors.MedzooError` for an ``OSError`` met while ``doing``."""
    where = f" {err.filename}" if err.filename else ""
    cause = _DISK_CAUSES.get(err.errno or -1) or err.strerror or str(err) or type(err).__name__
    code = f" (errno {errno.errorcode.get(err.errno, err.errno)})" if err.errno else ""
    return MedzooError(f"{doing}{where}: {cause}{code}; nothing was changed")


# Modules whose exceptions are about the user's files, not about medzoo: an error raised inside
# them while reading input is the input's fault (a damaged image, HDF5 file or archive).
_INPUT_LIBRARIES = ("PIL", "h5py", "safetensors", "onnx", "google.protobuf", "zipfile", "tarfile")


def _origin(err: BaseException) -> str:
    """The module of the innermost frame that raised ``err`` ('' when unknown)."""
    tb = err.__traceback__
    module = ""
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "") or module
        tb = tb.tb_next
    return module


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error a user or a disk can cause; None for a bug.

    The families: disk and file-system errors by errno (full, read-only, permission, a file in
    the path, ...), image decoding errors (including Pillow's decompression-bomb and
    oversized-metadata errors), HDF5 and archive errors, and text files that are not UTF-8.
    Anything else is a bug and keeps its traceback.
    """
    name = type(err).__name__
    origin = _origin(err)
    if name in ("DecompressionBombError", "DecompressionBombWarning"):
        return f"an image is too large to decode safely ({err}); give a smaller image"
    if isinstance(err, UnicodeDecodeError):
        return f"a text file is not UTF-8 ({err.reason} at byte {err.start}): save it as UTF-8"
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return str(disk_error(err, errno.errorcode.get(err.errno, "I/O error")))
    if origin.split(".")[0] in _INPUT_LIBRARIES or origin.startswith(_INPUT_LIBRARIES):
        first = (str(err).strip().splitlines() or [name])[0][:300]
        return f"a damaged or unsupported input file ({origin.split('.')[0]} {name}: {first})"
    return None
