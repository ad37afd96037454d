"""BlameTrail web: the product pages over the REST API."""
