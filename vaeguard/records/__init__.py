"""The record core, below the models: what every path a record takes shares.

`serving` is the contract a model kind serves records by (`Serving`: featurize, score; one
`entity_of` rule); `inputs` assembles rows that arrive in parts; `batch` is the pure batch step
(records in, score records and dead letters out, never raising for a record), run by the daemon,
`vaeguard score` and the apps alike; `wire` is the format those outputs are produced in.
The ingestion contract itself is `vaeguard.ingest`, the sources besides Kafka
`vaeguard.sources`, the score record `vaeguard.scored`.
"""
