"""Writer throughput: the same 12,000 in-memory samples (~61 kB jpg + json + txt each) written by
fastwds ``ShardWriter.write`` and ``write_batch``, by ``webdataset.ShardWriter`` (the peer) and by
raw ``write()`` calls into one file (the floor), each durable on disk before its clock stops.
Prints samples/s, MB/s, peak RSS and the ratios to the floor and the peer.

Usage: python benches/bench_write.py [--samples N] [--payload-kb N] [--repeat N] [--json FILE]
(the options of ``fastwds bench write``).
"""

import sys

from fastwds.cli import main

sys.exit(main(["bench", "write", *sys.argv[1:]]))
