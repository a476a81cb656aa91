"""Replace a folder in one step: write everything into a temporary sibling, then swap it in.

A temporary is named ``.<name>.tmp-<pid>-*`` and a folder being replaced ``.<name>.old``, so
:func:`segcore.store.clean_stale_temporaries` can tidy up (or restore) what a killed writer left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["replaced_dir"]


@contextmanager
def replaced_dir(directory: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error it becomes ``directory``.

    An existing ``directory`` is replaced as a whole (never merged); on any error (or interruption) the
    temporary is removed and ``directory`` is left as it was.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "model"
    >>> with replaced_dir(d) as tmp:
    ...     _ = (tmp / "a.txt").write_text("1")
    >>> with replaced_dir(d) as tmp:
    ...     _ = (tmp / "b.txt").write_text("2")
    >>> sorted(p.name for p in d.iterdir())
    ['b.txt']
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))
    try:
        yield tmp
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
