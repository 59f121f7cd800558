"""Text sources of a language-model extraction: files, directories and the CPython docs.

``husai extract-lm --text`` takes paths and one name. A file is one document, whatever its
suffix, and must be UTF-8. A directory contributes its plain-text files (``.txt``, ``.md``,
``.rst``, ``.text``), recursively, in sorted path order, skipping hidden ones. The name
``pydoc`` (when no such path exists here) is the English text that ships with CPython in
``pydoc_data.topics``: 79 help topics, about 465k characters, one document per topic in
sorted topic order. So the demo needs no download.

Documents are yielded one at a time (:func:`iter_documents`), so a large corpus is never
held in memory as text; :func:`check_sources` validates every source first, so a bad path
fails before anything is tokenized or written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from husai.errors import UserError

PYDOC = "pydoc"
"""The ``--text`` name of CPython's ``pydoc_data.topics`` help text."""

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
"""Files a directory contributes; a file named directly is read whatever its suffix."""


@dataclass(frozen=True)
class Document:
    """One unit of text: windows never cross a document boundary."""

    name: str
    text: str


def check_sources(sources: list[str | Path]) -> list[str | Path]:
    """The sources, each an existing file or directory or ``pydoc``; else one UserError."""
    if not sources:
        raise UserError("--text: expected at least one file, directory or 'pydoc'")
    for source in sources:
        path = Path(source)
        if not path.exists() and str(source) != PYDOC:
            raise UserError(f"--text {source}: no such file or directory (or use '{PYDOC}')")
        if path.is_dir() and not _dir_files(path):
            raise UserError(
                f"--text {source}: directory holds no text files ({', '.join(TEXT_SUFFIXES)})"
            )
    return sources


def iter_documents(sources: list[str | Path]) -> Iterator[Document]:
    """Every document of the sources, in order (see the module docstring)."""
    for source in check_sources(sources):
        path = Path(source)
        if not path.exists():
            yield from _pydoc_documents()
        elif path.is_dir():
            for file in _dir_files(path):
                yield Document(str(file), _read(file))
        else:
            yield Document(str(path), _read(path))


def _dir_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--text {path}: not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"--text {path}: cannot read ({err.strerror})") from None


def _pydoc_documents() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"{PYDOC}:{name}", topics[name])
