"""Converters: plan (input -> independent shard tasks), pipeline (one task), run (all tasks)."""
