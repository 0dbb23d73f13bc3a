"""What an endpoint's URL says about it, decided when a job is validated.

The continuation form (how an interrupted answer goes back to the endpoint;
the forms are described in :mod:`batchgen.engine.continuation`) follows the
endpoint unless ``endpoint.continuation`` names one.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

FORMS = ("partial", "prefix", "continue_final_message", "prefill", "none")


def detect(base_url: str, local: bool) -> str:
    """The continuation form an endpoint most likely speaks."""
    if local:
        return "prefill"
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if re.search(r"(^|\.)dashscope[a-z0-9-]*\.aliyuncs\.com$", host):
        return "partial"
    if host == "api.deepseek.com" and parts.path.rstrip("/").startswith("/beta"):
        return "prefix"
    return "none"
