"""Schema migrations and partition maintenance for the write side."""
