"""BlameTrail enricher service."""
