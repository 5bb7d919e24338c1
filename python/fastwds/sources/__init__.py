"""Input readers. Each source plans tasks from its input and reads a task's rows as ``RowBatch``es,
so validation, encoding, writing and the manifest are written once for every source."""
