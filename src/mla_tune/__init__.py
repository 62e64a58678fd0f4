"""mla-tune: measure vLLM's MLA attention settings per GPU, model and traffic, and export tuning tables."""

from __future__ import annotations

import logging

# A library logs, the application decides where to: without this, Python's last-resort handler would print
# warnings (a failed kernel, a worker restart) to the terminal of every caller.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
