"""Adapters for the systems rotator talks to: one module per outside system."""
