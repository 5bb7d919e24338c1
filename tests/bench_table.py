"""Reading the table `fastwds bench ...` prints, for the bench tests."""

from __future__ import annotations


def table_row(table: str, name: str) -> list[str]:
    """The cells after the runner's name in its table row (columns are 2+ spaces apart), without
    the ``[floor]`` / ``[peer]`` tag the table puts after the floor's and the peer's names."""
    for line in table.splitlines():
        if line == name or line.startswith(name + "  ") or line.startswith(name + " ["):
            cells = line[len(name):].split()
            return cells[1:] if cells and cells[0] in ("[floor]", "[peer]") else cells
    raise AssertionError(f"no row for {name!r} in:\n{table}")
