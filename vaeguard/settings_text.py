"""Settings given as text (environment variables): the readings every settings module shares."""

from __future__ import annotations

import json
from typing import Any


def list_from_text(v: Any) -> Any:
    """A list setting given as text (an environment variable): a JSON list or comma-separated."""
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not a valid JSON list ({exc.msg})") from None
        return [t.strip() for t in text.split(",") if t.strip()]
    return v
