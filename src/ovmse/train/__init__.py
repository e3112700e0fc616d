"""The jitted training programs."""
