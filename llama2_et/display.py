"""Results as the book shows them: tables and package source as Markdown, with a plain-text twin.

Jupyter renders `_repr_markdown_` (the book: an HTML table, a highlighted code block); `__repr__` is
the text/plain form that a terminal shows and nbval compares, so both carry the same values.
`native_logs_discarded` keeps the native libraries' log lines (ExecuTorch's C++ logging) out of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NUMBER = re.compile(r"[-+]?[.\d]")  # a cell that starts like a number is right-aligned


def cell(value: object) -> str:
    """A value as a table shows it: ints with thousands separators, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Table:
    """Rows of cells under a header, optionally with a title line above them."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str = ""

    def right_aligned(self) -> list[bool]:
        """Per column: every cell starts like a number (numbers, sizes, ratios, '-')."""
        return [
            all(NUMBER.match(row[i]) or row[i] == "-" for row in self.rows) for i in range(len(self.header))
        ]

    def _repr_markdown_(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

        rule = "|" + "|".join("---:" if right else ":---" for right in self.right_aligned()) + "|"
        lines = [line(self.header), rule, *(line(row) for row in self.rows)]
        return "\n".join([f"**{self.title}**", "", *lines] if self.title else lines)

    def __repr__(self) -> str:
        widths = [max(len(row[i]) for row in (self.header, *self.rows)) for i in range(len(self.header))]
        aligns = self.right_aligned()

        def line(cells: Sequence[str]) -> str:
            padded = (
                c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, aligns, strict=True)
            )
            return "  ".join(padded).rstrip()

        lines = [line(self.header), *(line(row) for row in self.rows)]
        return "\n".join([self.title, *lines] if self.title else lines)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> Table:
    """A table of values (formatted by `cell`); a row must have one cell per header column."""
    cells = tuple(tuple(cell(v) for v in row) for row in rows)
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns {list(header)}: {row}")
    return Table(tuple(header), cells, title)


@dataclass(frozen=True)
class Source:
    """Source code: a highlighted block in the book, the code itself as text."""

    code: str
    language: str = "python"

    def _repr_markdown_(self) -> str:
        fence = "`" * max([3, *(len(run) + 1 for run in re.findall(r"`+", self.code))])
        return f"{fence}{self.language}\n{self.code.rstrip()}\n{fence}"

    def __repr__(self) -> str:
        return self.code.rstrip()


def source(obj: object) -> Source:
    """The source of a package function, class or method, as the book displays it."""
    return Source(inspect.getsource(obj))


def excerpt(path: str | os.PathLike, first: str, last: str, language: str = "cpp") -> Source:
    """The lines of a source file from the one holding `first` to the next one holding `last`, headed
    by the file's name and their line numbers (the C++ sources the book shows)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i in range(start, len(lines)) if last in lines[i])
    header = f"// {path.name}, lines {start + 1}-{end + 1}"
    return Source("\n".join([header, *lines[start : end + 1]]), language)


@contextlib.contextmanager
def native_logs_discarded() -> Iterator[None]:
    """Discard what the block writes to stdout and stderr, from Python and from native code alike.

    ExecuTorch logs through Python's sys.stderr (its Python bindings) or straight to the process's
    file descriptors 1 and 2 (its C++ runtime, which the notebook's redirect_stderr cannot catch).
    """
    libc = ctypes.CDLL(None)
    saved = os.dup(1), os.dup(2)
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            libc.fflush(None)  # C stdio buffers written inside the block go to /dev/null too
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
