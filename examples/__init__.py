"""Agents of your own, built on `agents.ThreadAgent` (serve one with `agentrt serve --agent module:Class`)."""
