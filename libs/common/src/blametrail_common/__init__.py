"""Shared code of the BlameTrail services."""
