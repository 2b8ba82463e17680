"""Workflows: declarative specs, their validation, alarm rules, and the runtime that applies them to frames."""
