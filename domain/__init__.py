"""The write side: commands, rules, aggregates, events, the SQL write model and its outbox.

Knows nothing of GraphQL, MongoDB or HTTP.
"""
