"""Postgres persistence of the control plane, one module per aggregate (psycopg 3).

SQL lives here. Every write puts its state event in the outbox (:mod:`.outbox`) within the same
transaction, and every query is scoped to one organization. :mod:`.db` holds the pool, the row
types, cursors and the SQL the aggregates share; :mod:`.read_model` reads the projection's tables;
:mod:`.ui` serves the Sentry UI components. :class:`~blametrail_mappings_api.repository.Repository`
composes the aggregate stores over one pool.
"""
