"""Thin widgets: each shows part of the session state and reports edits; none holds state of its own."""
