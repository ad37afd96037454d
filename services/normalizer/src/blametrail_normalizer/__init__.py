"""BlameTrail normalizer service."""
