"""Reading a channel's own settings (``channels.<name>``, or a block inside it) with the channel's pydantic model.

One way for every channel, built-in or third-party: the dispatcher's keys are left out, and a mistake becomes an
``InputError`` at its line of the config file (with a "did you mean" for a misspelt key), or naming the file when
the settings did not come from one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.channels.base import own_config
from orchestrator.errors import InputError, InputErrors
from orchestrator.yamlfile import validation_problems

M = TypeVar("M", bound=BaseModel)


def load_channel_config(model: type[M], raw: Any, settings: Any, path: Sequence[str], hint: str) -> M:
    """``raw`` (the block at ``path``, e.g. ``("channels", "sms")``) validated by ``model``."""
    where = ".".join(path)
    file = getattr(settings, "source", None)
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping of settings, got {raw!r}", file=file, hint=hint)
    try:
        return model.model_validate(own_config(raw) if len(path) == 2 else dict(raw))
    except ValidationError as exc:
        doc = getattr(settings, "document", None)
        if doc is not None:
            problems = validation_problems(doc, exc, tuple(path), model.model_fields)
            if problems:
                for problem in problems:
                    problem.hint = problem.hint or hint
                raise (problems[0] if len(problems) == 1 else InputErrors(doc.file, problems)) from None
        detail = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or path[-1]}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors(include_url=False)
        )
        raise InputError(f"{where}: {detail}", file=file, hint=hint) from None


def missing_setting(settings: Any, path: Sequence[str], example: str) -> InputError:
    """The error for a setting a real provider cannot do without (a sender, a signature, an unsubscribe URL):
    demo placeholders must never reach customers. Points at the enclosing block of the config file."""
    key = ".".join(path)
    message = f"{key} is not set: a real provider needs it (the demo placeholder is never sent)"
    doc = getattr(settings, "document", None)
    if doc is not None:
        block = tuple(path[:-1])
        if block and doc.position(block)[0] is not None:
            error = doc.error(block, message, hint=f"add it: {example}")
            error.message = message
            return error
    return InputError(message, file=getattr(settings, "source", None), hint=f"add it: {example}")
