"""Steady test suite."""
