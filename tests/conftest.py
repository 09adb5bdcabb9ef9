"""Fixtures shared by every tier."""
