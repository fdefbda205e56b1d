"""exec-supervisor: supervise farms of WeFastAPI executors (ET-<Name>-<id>)."""

__version__ = "0.1.0"
