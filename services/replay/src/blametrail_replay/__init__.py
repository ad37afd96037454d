"""Operator commands over the Kafka log (``blametrail replay``)."""
