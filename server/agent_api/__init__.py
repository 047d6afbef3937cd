"""The agent API under /luban/api/… (docs/agent-protocol.md)."""
