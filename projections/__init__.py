"""The read side: the outbox relay, projectors into MongoDB documents, and read functions.

Knows domain event types and MongoDB; nothing of GraphQL or HTTP.
"""
