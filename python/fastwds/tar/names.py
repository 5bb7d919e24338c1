"""How readers turn member names into samples: the one key-split rule and the one skip rule used
by fastwds' reader, ``verify``, ``inspect`` and the Energon indexer (COMPAT.md).

webdataset, Energon and HF datasets all split with ``^((?:.*/|)[^.]+)[.]([^/]*)$``: the key is
everything up to the first dot of the basename, the extension the rest (``x.0.jpg`` -> ``x``,
``0.jpg``). Extensions are kept as written: Energon, HF and DALI do not lowercase them (only
webdataset does), so ``verify`` warns about uppercase ones instead. Members named ``__x__``
(``__key__``-style metadata) are skipped by webdataset and Energon; so are they here.
"""

from __future__ import annotations

import re

KEY_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
METADATA = re.compile(r"__[^/]*__($|/)")


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/key.ext.more`` -> ``("dir/key", "ext.more")``; None for names readers cannot split."""
    if "/" not in name:  # the usual case, without the regex
        key, dot, ext = name.partition(".")
        return (key, ext) if dot and key else None
    match = KEY_SPLIT.match(name)
    return (match.group(1), match.group(2)) if match else None


def is_metadata(name: str) -> bool:
    """``__key__``-style members that webdataset and Energon leave out of every sample."""
    return METADATA.match(name) is not None
