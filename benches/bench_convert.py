"""Conversion throughput: a generated LLaVA-style parquet dataset (12,000 rows, ~3% broken, ~5%
with two images, JPEG ~50-100 kB and some PNG), or the first --limit rows of your own parquet
folder, converted by fastwds (at each --workers count; --modes adds --verify-images full, with a
one-core Pillow decode reference, and --reencode jpeg), by webdataset.ShardWriter fed by pyarrow
(the peer), and read by pyarrow with every column buffer written to one file (the floor). Each
is durable on disk before its clock stops. Prints samples/s, MB/s, peak RSS, the ratios to the
floor and the peer, the scaling over worker counts and the targets.

Usage: python benches/bench_convert.py [INPUT] [--limit N] [--rows N] [--workers 1,2]
       [--modes default,full,reencode] [--repeat N] [--json FILE] [--plot FILE.png]
(the options of ``fastwds bench convert``).
"""

import sys

from fastwds.cli import main

sys.exit(main(["bench", "convert", *sys.argv[1:]]))
