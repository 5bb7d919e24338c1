"""Read throughput: the same volumes read as NPZ float32 files with np.load (the floor), as
fastwds float16 shards through fastwds.WebDataset (raw, decoded, and through a DataLoader with
workers) and through webdataset.WebDataset (the peer). Prints samples/s, MB/s, peak RSS and the
speed-ups.

Usage: python benches/bench_read.py [--volumes N] [--shape 1,240,480,480] [--npz DIR]
[--workers 0,2] [--prefetch N] [--zstd] [--repeat N] [--json FILE]
(the options of ``fastwds bench read``).
"""

import sys

from fastwds.cli import main

sys.exit(main(["bench", "read", *sys.argv[1:]]))
