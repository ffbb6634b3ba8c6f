"""The manuscript: its tables and prose from the aggregate's files, and its render (no torch, no runner)."""
