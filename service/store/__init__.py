"""The durable store: destinations, activations, the outbox and what became of each update.

`base.Store` is the interface and holds the record types; `sql.SqlStore` writes every query once;
`sqlite.SqliteStore` (the embedded default, `await SqliteStore.open(path, box)`) and
`postgres.PostgresStore` run it.
"""
