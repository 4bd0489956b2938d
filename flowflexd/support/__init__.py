"""Small primitives with no knowledge of inboxes: durable writes, hashing, logging."""
