"""The Agent profile: an OpenAI Agents SDK agent with built-in tools, streamed through the
same pipeline as every answer, its tool calls shown beside the text (docs/architecture.md)."""
