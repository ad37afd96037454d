"""Development stack: real Kafka + Postgres on loopback, and the pytest fixture layer."""
