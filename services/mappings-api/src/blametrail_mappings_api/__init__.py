"""BlameTrail mappings-api service."""
