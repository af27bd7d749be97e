"""Retry accounting for the user's own retry loops (tenacity hooks and the retry decorator)."""
