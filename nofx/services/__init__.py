"""The service layer: plain verb functions that entrypoints (HTTP, tasks, CLI) call."""
