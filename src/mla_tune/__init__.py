"""mla-tune: measure vLLM's MLA attention settings per GPU, model and traffic, and export tuning tables."""

from __future__ import annotations

__version__ = "0.1.0"
