"""Model adapters behind one interface, :class:`relayline.worker.llm.base.LLMClient`.

``openai_compat`` talks to any OpenAI-compatible server (Ollama, vLLM, llama.cpp, ...);
``local`` is the built-in model that needs nothing installed.
"""

from __future__ import annotations
