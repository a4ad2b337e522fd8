"""The OpenAI-compatible gateway: completions as turns, in OpenAI's wire format."""
