"""Reconciliation of missed webhooks and issue merges (issue 18 §3-4): see ``sweep.py``."""
