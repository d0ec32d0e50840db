"""Secret files: created readable by their owner only from the first byte, checked when read.

A secret the service generates for itself (the person-key secret, the payload key, a signing key
in the data directory) is written to a temporary file opened with ``O_CREAT | O_EXCL`` and mode
0600 — there is no moment at which the file exists with looser permissions, whatever the umask
(a umask can only take bits away) — and linked into place, so a reader sees either no file or
the whole secret, never a half-written one, and two processes generating at once keep the one
that got there first.

Reading one back checks its mode: a secret the service keeps itself that group or others may
read is refused (``SecretFileExposed``: someone loosened it, or copied the data directory
without its modes; the line says how to put it right); a file the operator hands over
(``LEDGER_CIPHER_KEY_FILE``, a container's secret mount) only draws a warning, since how it is
mounted is the platform's business.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ledger")

SECRET_MODE = 0o600


class SecretFileExposed(SystemExit):
    """A secret file the service keeps itself is readable by group or others."""


def create_secret_file(path: Path, text: str) -> bool:
    """Write ``text`` to a new file at ``path``, mode 0600 from its creation; ``False`` (and
    nothing changed) when ``path`` exists already."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), SECRET_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)  # fails when the path exists: the first one made stays
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def read_secret_file(path: Path, *, own: bool, what: str = "secret") -> str:
    """The stripped text of the secret file ``path``. ``own``: a file the service made (looser
    permissions than 0600 are refused); else one the operator gave (a warning)."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        if own:
            raise SecretFileExposed(
                f"{what} file {path} is readable by others (mode {mode:04o}): `chmod 600 {path}`, and treat the "
                "secret as seen by whoever could read it"
            )
        log.warning("event=secret_file_mode file=%s mode=%04o: readable by others; 0600 or 0400 is enough", path, mode)
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise SystemExit(f"{what} file {path} is empty")
    return text


def local_secret_file(path: Path, generate: Callable[[], str], *, what: str = "secret") -> str:
    """The secret kept in ``path``, generated (``generate()``) and written mode 0600 the first time."""
    path = Path(path)
    if not path.exists():
        create_secret_file(path, generate() + "\n")
    return read_secret_file(path, own=True, what=what)
