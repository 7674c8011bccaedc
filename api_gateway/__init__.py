"""The HTTP gateway: native job API, OpenAI-compatible API, auth, limits."""
