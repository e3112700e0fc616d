"""The study: experiment specs, cells cached by config hash, executors, statistics, reports."""
