"""Benchmarks behind ``fastwds bench``: ``harness`` runs and reports them, ``worker`` is the
process each run happens in, and one module per benchmark (``write``) defines its runners."""
