"""Layer 2: the language-model runtime (:mod:`lightning_rec.agents.llm`) that LLM-backed methods share."""

from lightning_rec.agents.llm import (
    Generation,
    HFCausalLM,
    LLMBackend,
    LLMRequestError,
    LLMUsage,
    OpenAICompatible,
    Prompt,
    ScriptedLLM,
)

__all__ = [
    "Generation",
    "HFCausalLM",
    "LLMBackend",
    "LLMRequestError",
    "LLMUsage",
    "OpenAICompatible",
    "Prompt",
    "ScriptedLLM",
]
