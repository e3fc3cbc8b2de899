"""The durable store: destinations, activations, the outbox and what became of each update.

`sql.Store` is the store: every query, written once, with what each method does; `base` holds the
records it takes and returns and its errors. `sqlite.SqliteStore` (the embedded default,
`await SqliteStore.open(path, box)`) and `postgres.PostgresStore` subclass it and run its queries.
"""
