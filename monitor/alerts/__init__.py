"""Rank alerts: rule evaluation, the outbox, and the email and webhook channels."""
