"""Publishing a finished folder or file: atomically, and with the permissions the process umask asks for.

Every artifact eakd hands to someone else (a student, a compressed step, an export, the converted bundled
teacher, a training checkpoint, a dataset, an evaluation) is written into a temporary folder and renamed into
place by :func:`publish_dir`, so a crash never leaves a half-written folder that looks complete, and an older
folder is only removed once the new one is in place. A single file (a card, a journal, a summary) is replaced
the same way by :func:`write_text_atomic`.

Why the permissions are set here by hand: ``safetensors`` >= 0.8 writes every file through a
``tempfile::NamedTempFile`` (mode 0600, whatever the umask) and renames it into place
(safetensors/safetensors#764, reported as #782), and ``transformers``' ``save_pretrained`` writes its
weights through it. ``tempfile.mkdtemp`` likewise makes 0700 folders. So a student's ``model.safetensors``
came out 0600 beside a 0644 ``config.json``, and a server running under another account could read the
config but not the weights. :func:`apply_umask` gives every file and folder of an artifact the mode an
ordinary ``open()``/``mkdir()`` would have given it (``0o666``/``0o777`` less the umask), once, at the
moment the folder is published. Secrets (``distill/credentials.py``) are never published this way and stay 0600.

Run: ``python -c "from distill.io import apply_umask; apply_umask('runs/x/student')"`` to repair an older folder.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``): the
    ``os.umask`` swap briefly sets umask 0, and a file another thread creates in that moment would be
    world-writable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: str | Path) -> None:
    """Give ``folder``, every folder under it and every file in them the mode ``open()``/``mkdir()`` would
    have given under the current umask: ``0o777 & ~umask`` for folders and executables, ``0o666 & ~umask``
    for other files. Symbolic links are left alone (their mode is not used)."""
    mask = current_umask()
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        executable = stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111
        mode = (0o777 if executable else 0o666) & ~mask
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Rename the finished folder ``tmp`` to ``final`` (same filesystem), after :func:`apply_umask`; an older
    ``final`` is moved aside first and removed only once the new one is in place. Returns ``final``."""
    tmp, final = Path(tmp), Path(final)
    apply_umask(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically: written beside it under a hidden temporary name, then renamed, so
    a crash leaves the old file or the new one, never half of one. Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither half a file nor a stray temporary
        raise
    return path
