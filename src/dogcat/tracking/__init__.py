"""Run folders, logs and progress display."""
