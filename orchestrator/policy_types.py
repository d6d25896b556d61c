"""Setting types that both the config file (``policies:`` defaults) and a campaign (``dispatch:``) use.

They live below both, so that the config does not depend on the campaign schema and the two can never disagree
about what a frequency cap or a quiet-hours window is.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from orchestrator.durations import parse_duration
from orchestrator.timeutil import DailyWindow

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\d+\s*[dwhms]$", "examples": ["90d", "2w", "12h"]}),
]


def _daily_window(text: str) -> str:
    DailyWindow.parse(text)
    return text


#: a local daily window ``HH:MM-HH:MM`` (may wrap midnight), checked where it is written
LocalWindow = Annotated[str, AfterValidator(_daily_window)]
QuietHours = Annotated[
    LocalWindow,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([01]?\d|2[0-3]):[0-5]\d\s*-\s*([01]?\d|2[0-3]):[0-5]\d$",
            "description": "local quiet window, e.g. '21:00-09:00'",
        }
    ),
]


class FrequencyCap(BaseModel):
    """At most ``max`` messages within ``per`` (on ``channel``, or on every channel that is a message)."""

    model_config = ConfigDict(extra="forbid")

    max: int = Field(ge=1, le=10_000)
    per: Duration
    channel: str | None = None
