"""BlameTrail projector: the log -> the Postgres read model.

- :mod:`blametrail_projector.rows` (pure, with :mod:`~blametrail_projector.pgsafe`): log records
  -> rows; no I/O library.
- :mod:`blametrail_projector.projection`: the SQL that writes those rows (psycopg), and the
  dead-letter path for records Postgres refuses.
- :mod:`blametrail_projector.__main__`: the composition root (``python -m blametrail_projector``),
  the consumer loop that keeps rows and offsets in one transaction, and the health server.

Its own process, apart from the enricher: a slow Sentry never stalls the read model and a
Postgres outage never stalls enrichment. ``blametrail replay projection rebuild`` runs
:class:`~blametrail_projector.projection.Projection` too (into shadow tables), so a rebuild
writes exactly what the live projector writes.
"""
