"""Source adapters: one module per source kind (``sql``, ``s3``, ...), one protocol (`base`)."""
