"""Migrations of the hits app."""
