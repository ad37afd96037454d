"""BlameTrail ingest service."""
