"""One benchmark run in its own process: ``python -m fastwds.bench.worker MODULE:FUNCTION OUT_DIR ARGS_JSON``.

Calls ``FUNCTION(args, Path(OUT_DIR), clock)`` and prints one JSON line on stdout: the seconds of
its ``with clock:`` section, the peak RSS before that section and at the end (``peak_rss_kib``),
and the dict the function returned. Any error
ends the process non-zero with the traceback on stderr, which the harness reports.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path

from fastwds.bench.harness import Clock, peak_rss_kib


def main(argv: list[str]) -> int:
    target, out_dir, args_json = argv
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    clock = Clock()
    # stdout carries the result line; whatever the runner prints (webdataset announces each
    # shard) goes to stderr instead.
    with contextlib.redirect_stdout(sys.stderr):
        result = function(json.loads(args_json), Path(out_dir), clock)
    if clock.seconds is None:
        raise RuntimeError(f"{target} never timed its work (no `with clock:` section)")
    if not isinstance(result, dict) or not {"samples", "bytes", "outputs"} <= result.keys():
        raise TypeError(f"{target} must return a dict with 'samples', 'bytes' and 'outputs', "
                        f"not {result!r:.200}")
    print(json.dumps({"seconds": clock.seconds, "setup_rss_kib": clock.setup_rss_kib,
                      "peak_rss_kib": peak_rss_kib(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
