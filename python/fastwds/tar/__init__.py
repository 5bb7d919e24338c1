"""The one tar layer: header fields (``format``), how readers name samples (``names``), the fast
forward-only reader behind ``fastwds.WebDataset`` (``stream``), the defensive block-level scanner
behind ``verify``, ``inspect`` and the Energon indexer (``scanner``), and shard paths and opening
(``shards``). Every reader in fastwds splits keys and skips metadata members by ``names``."""
