"""The audit log: append-only, hash-chained events with signed checkpoints of the head."""
