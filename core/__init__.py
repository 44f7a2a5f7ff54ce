"""The launcher core (placeholder API; filled in by the launcher commit)."""
