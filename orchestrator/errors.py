"""Errors the command line turns into exit statuses.

``InputError`` (exit 2) is for anything the user can fix in what they gave us: a file, an option, a value.
It carries the file and line so that the message can point at the problem. ``RuntimeFailure`` (exit 1) is for
things that went wrong while doing valid work (a database that is unreachable, a provider that is down).
"""

from __future__ import annotations


class OrchestratorError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class InputError(OrchestratorError):
    """Invalid input: exit status 2, nothing written."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, hint=hint)
        self.file = file
        self.line = line
        self.column = column

    @property
    def location(self) -> str:
        parts = [p for p in (self.file, self.line, self.column) if p is not None]
        return ":".join(str(p) for p in parts)

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"error: {where}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class InputErrors(InputError):
    """Several problems with one input, each with its own position; shown as the list it is."""

    def __init__(self, file: str, problems: list[InputError]):
        first = problems[0]
        super().__init__(first.message, file=file, line=first.line, column=first.column, hint=first.hint)
        self.problems = problems

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class RuntimeFailure(OrchestratorError):
    exit_code = 1
