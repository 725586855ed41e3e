"""vaeguard-slack: post vaeguard alerts to Slack through an incoming webhook, as Block Kit.

Install ``pip install vaeguard-slack`` (or ``pip install -e plugins/slack`` from a checkout)
and configure::

    alerts:
      sinks:
        - name: team-slack
          type: slack
          webhook_url: https://hooks.slack.com/services/T000/B000/XXXX   # a secret
          mention: "<!here>"          # prepended to critical alerts (optional)

Each alert is one message: a header with status and severity, the one-line summary, the
score and threshold, the top features (observed vs expected) and the alert id as context.
``text`` carries the summary too, for notifications and clients without Block Kit. Slack's
429 (with Retry-After) and 5xx are retried; 4xx such as ``invalid_payload`` or a revoked
webhook (404 / 410) are permanent. The webhook URL is a credential: it is a `SecretStr`, never
logged (errors name only the host).

Alert text is data, not markup: ``&``, ``<`` and ``>`` are escaped as Slack asks, so an entity
key like ``<!channel>`` cannot ping a channel or forge a link; the header is one line within
Slack's 150 characters, and every text within its block limits.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import Field, SecretStr, field_validator

from vaeguard.alerts.http import HttpPoster
from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import Sink, SinkSettings
from vaeguard.alerts.text import one_line, truncate

__version__ = "0.1.0"

#: Block Kit limits (characters): header text, section text, a section field's text.
HEADER_MAX, SECTION_MAX, FIELD_MAX = 150, 3000, 2000
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")

_EMOJI = {
    "critical": ":red_circle:",
    "major": ":large_orange_circle:",
    "warning": ":large_yellow_circle:",
}


class SlackSettings(SinkSettings):
    webhook_url: SecretStr
    #: Text prepended to alerts of these severities, e.g. ``<!here>`` or ``<@U123>``.
    mention: str | None = None
    mention_severities: list[str] = Field(default_factory=lambda: ["critical"])
    #: Overrides of the webhook's default channel / name (legacy webhooks only).
    channel: str | None = None
    username: str | None = None

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return v


def escape(text: object, max_chars: int = SECTION_MAX) -> str:
    """Alert text for a mrkdwn field: one line, ``&`` ``<`` ``>`` escaped, within the limit."""
    line = one_line(text)
    escaped = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if len(escaped) <= max_chars:
        return escaped
    cut = _PARTIAL_ENTITY.sub("", escaped[: max(0, max_chars - 1)])  # never half an &amp;
    return cut + "…"


def blocks(alert: Alert, mention: str | None = None) -> dict[str, Any]:
    """The Slack message for one alert (``text`` fallback + Block Kit ``blocks``)."""
    resolved = alert.status == "resolved"
    icon = ":large_green_circle:" if resolved else _EMOJI.get(alert.severity, ":warning:")
    header = f"{icon} {alert.status.upper()} · {alert.severity} · {alert.stream}"
    if alert.entity:
        header += f" · {alert.entity}"
    summary = escape(alert.summary, SECTION_MAX - len(mention or "") - 1)
    text = summary if not mention else f"{mention} {summary}"
    fields = []
    if alert.score is not None and alert.threshold is not None:
        fields.append(
            {
                "type": "mrkdwn",
                "text": f"*Score*\n{alert.score:.2f} (threshold {alert.threshold:.2f})",
            }
        )
    fields.append({"type": "mrkdwn", "text": f"*First seen*\n{alert.first_seen.isoformat()}"})
    if alert.model_version:
        model = escape(alert.model_version, FIELD_MAX - 10)
        fields.append({"type": "mrkdwn", "text": f"*Model*\n{model}"})
    fields.append({"type": "mrkdwn", "text": f"*Records*\n{alert.anomalous_records} anomalous"})
    out: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": one_line(header, HEADER_MAX), "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "fields": fields},
    ]
    if alert.top_features and not resolved:
        lines = [
            f"• `{escape(c.feature, 200)}` observed *{_fmt(c.observed)}*, expected "
            f"{_fmt(c.expected)}"
            + (f" ({c.share:.0%} of the excess)" if c.share is not None else "")
            for c in alert.top_features
        ]
        out.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": truncate("*Top features*\n" + "\n".join(lines), SECTION_MAX),
                },
            }
        )
    out.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"vaeguard alert `{escape(alert.id, 300)}`"}],
        }
    )
    return {"text": text, "blocks": out}


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


class SlackSink(Sink):
    """Slack incoming webhook: one Block Kit message per alert."""

    Settings = SlackSettings
    max_batch = 1

    def __init__(self, settings: SlackSettings, context):
        super().__init__(settings, context)
        self.http = HttpPoster(context.timeout_s, headers={"Content-Type": "application/json"})

    def send(self, alerts: list[Alert]) -> None:
        s = self.settings
        for alert in alerts:
            mention = (
                s.mention
                if alert.status == "firing" and alert.severity in s.mention_severities
                else None
            )
            message = blocks(alert, mention)
            if s.channel:
                message["channel"] = s.channel
            if s.username:
                message["username"] = s.username
            self.http.post(s.webhook_url.get_secret_value(), content=json.dumps(message).encode())

    def close(self) -> None:
        self.http.close()
