"""The GraphQL API: thin Strawberry types and resolvers over the command bus and read functions."""
