"""The render stage's template machinery: sandboxed Jinja2, safe template lookup, compile-once caching.

Why it looks like this:

- templates are written by marketers and run against customer data, so they run in Jinja's immutable sandbox (no
  Python internals, no mutating the context) with ``StrictUndefined`` (a misspelt field is an error, not a blank
  in ten thousand messages);
- template mistakes must surface at validate / dry-run time, never half-way through a send, so every error names
  the template file and line, and ``synthetic_context`` gives validate a realistic customer to render with;
- a campaign renders thousands of messages from one template, so a template compiles once and is cached per
  (root, path, mtime).

Lookup: a path from a campaign file resolves against the campaign file's folder first (``for_campaign``), then
each configured template folder in order; ``{% include %}`` and ``{% extends %}`` resolve in the configured
template folders. Absolute paths and paths that leave their folder (``..``, symlinks) are refused.
Filters and the synthetic context live in ``orchestrator.template_context``.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import (
    BaseLoader,
    Environment,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from orchestrator import template_limits as limits
from orchestrator import template_names
from orchestrator.errors import InputError
from orchestrator.template_context import SuggestingUndefined, closest, register_filters, synthetic_context
from orchestrator.timeutil import zone
from orchestrator.unsubscribe import PREVIOUS_FILE, SECRET_FILE

__all__ = [
    "CompiledTemplate",
    "TemplateLoader",
    "TemplateRenderError",
    "is_html_name",
    "make_environment",
    "resolve_template",
    "synthetic_context",
]

TEMPLATE_SUFFIXES = (".j2", ".jinja2", ".jinja")
DEFAULT_SUFFIXES = (".j2", ".jinja", ".jinja2", ".html", ".htm", ".txt")  # what `template_suffixes` defaults to
HTML_EXTENSIONS = (".html", ".htm")
CONTEXT_HINT = (
    "templates see customer, offer, campaign, step, now and unsubscribe_url; "
    "guard optional values with |default(...) or `is defined`"
)
SANDBOX_HINT = "templates run in a sandbox: use the fields of customer, offer, campaign and step only"

Stamp = tuple[int, int]  # (mtime in ns, size): a file changed if either did


class TemplateRenderError(InputError):
    """A template failed while rendering: undefined variable, sandbox violation, a filter given bad input."""


def is_html_name(name: str) -> bool:
    """Whether a template file is HTML (so autoescaped): ``welcome.html.j2`` is, ``sms.txt.j2`` is not."""
    stem = name.lower()
    for suffix in TEMPLATE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem.endswith(HTML_EXTENSIONS)


def _relative_name(name: str) -> str:
    """``name`` normalised; refused when absolute or climbing out with ``..`` (before touching the disk)."""
    text = name.replace("\\", "/")
    if text.startswith("/") or Path(name).is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise InputError(
            f"template path {name!r} is absolute",
            hint="name templates relative to the campaign file's folder or a configured template folder",
        )
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise InputError(f"template path {name!r} leaves the template folder", hint="remove the '..' parts")
    return normal


FileId = tuple[int, int]  # (st_dev, st_ino): the same file under any name, hard links included


@dataclass(frozen=True)
class TemplateFiles:
    """Which files may be read as templates: a campaign's folder is a template folder, and it (or the config's
    folder) also holds the signing keys, the config file, an SQLite database and ``.env`` files.

    A template is a file whose name has a template ending, whose real path (symlinks followed) is named so too,
    with no dot-file or dot-folder on either path, and that is not one of the ``protected`` files under any name:
    those are compared as files (device and inode), not paths, and a file with more than one hard link is refused
    outright (it may be another name for any file, a ``.env`` or a key, and no template needs one)."""

    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    protected: frozenset[Path] = frozenset()

    def check_name(self, name: str, *, shown: str | None = None) -> None:
        """Before touching the disk, so that a refusal says nothing about whether the file exists."""
        parts = name.replace("\\", "/").split("/")
        base = parts[-1].lower()
        if (
            base.startswith(SECRET_FILE)
            or not base.endswith(self.suffixes)
            or any(part.startswith(".") and part not in (".", "..") for part in parts)
        ):
            what = f"{shown!r} links to {name!r}, which" if shown else repr(name)
            raise InputError(
                f"{what} is not a template file",
                hint=f"template files end in {', '.join(self.suffixes)} (template_suffixes in the config file); "
                "dot-files, dot-folders and the signing keys are never templates",
            )

    def check_file(self, name: str, path: Path, root: Path, info: os.stat_result | None = None) -> None:
        """The file ``path`` (found as ``name`` in ``root``) judged by what it is: its real name and its inode."""
        real = path.resolve().relative_to(root.resolve()).as_posix()
        if real != posixpath.normpath(name.replace("\\", "/")):
            self.check_name(real, shown=name)
        info = info or path.stat()
        if (info.st_dev, info.st_ino) in self._protected_ids():
            raise InputError(
                f"{name!r} is the signing key, the config file or the database: never a template",
                hint="point `template:` at a template file",
            )
        if info.st_nlink > 1:
            raise InputError(
                f"{name!r} is a hard link (the file has {info.st_nlink} names): never a template",
                hint="copy the template file instead of linking it",
            )

    def _protected_ids(self) -> set[FileId]:
        """Stat'ed on each check: a database's -wal file, or a rotated key, may appear after start-up."""
        ids: set[FileId] = set()
        for path in self.protected:
            try:
                info = path.stat()
            except OSError:
                continue
            ids.add((info.st_dev, info.st_ino))
        return ids


def resolve_template(name: str, roots: Sequence[Path], files: TemplateFiles | None = None) -> tuple[Path, Path] | None:
    """``(root, file)`` of the first root holding ``name``, None if none does.

    The real path (symlinks followed) must stay inside its root: a template folder is the boundary of what
    a campaign file may read, so a link out of it is refused rather than skipped. Only template files
    (``files``) are found at all.
    """
    relative = _relative_name(name)
    files = files or TemplateFiles()
    files.check_name(relative)
    for root in roots:
        candidate = root / relative
        if not candidate.resolve().is_relative_to(root.resolve()):
            raise InputError(
                f"template path {name!r} resolves outside the template folder {root}",
                hint="templates (and symlinks to them) must stay inside their folder",
            )
        if candidate.is_file():
            files.check_file(relative, candidate, root)
            return root, candidate
    return None


def _stamp(path: Path) -> Stamp:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def _read(path: Path, root: Path, files: TemplateFiles) -> str:
    """The template's text, judged again on the open file: a link changed since the lookup is caught here."""
    try:
        with path.open("rb") as handle:
            files.check_file(path.relative_to(root).as_posix(), path, root, os.fstat(handle.fileno()))
            raw = handle.read()
    except OSError as exc:
        raise InputError(f"cannot read template: {exc.strerror}", file=str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"template is not UTF-8 text ({exc.reason})", file=str(path), line=line, hint="save it as UTF-8"
        ) from None


class _FolderLoader(BaseLoader):
    """Jinja's loader for ``{% include %}`` / ``{% extends %}``: the configured folders, with the same refusals."""

    def __init__(self, roots: Sequence[Path], filenames: set[str], files: TemplateFiles):
        self.roots = tuple(roots)
        self.filenames = filenames  # every template file compiled, to map render errors back to their lines
        self.files = files

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        found = resolve_template(template, self.roots, self.files)
        if found is None:
            raise TemplateNotFound(template)
        root, path = found
        stamp = _stamp(path)
        self.filenames.add(str(path))
        return _read(path, root, self.files), str(path), lambda: path.is_file() and _stamp(path) == stamp


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, bounded (``orchestrator.template_limits``: operators that can build huge values, calls, loops,
    ``~`` and the text collected by blocks and macros are checked), with one shortcut: ``customer.name`` on a
    plain dict (all template data is) reads the key directly. The sandbox's own lookup tries the attribute first
    and pays for an AttributeError on every field of every message; a dict's keys are data, never Python
    internals, so reading them first is just as safe."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = limits.BoundedCodeGenerator
    concat = staticmethod(limits.joined)  # what blocks, super() and macros are joined with
    bounded_buffer = limits.BoundedBuffer
    sized_parts = staticmethod(limits.sized_parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return limits.binop(operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        limits.check_time()
        limits.check_call(obj, args, kwargs)
        return limits.check_result(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            limits.check_brace_format(template, args, kwargs)
            return limits.check_result(wrapped(*args, **kwargs))

        return checked

    def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
        return limits.bound_loops(super()._parse(source, name, filename))

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def make_environment(
    *, autoescape: bool, loader: BaseLoader | None = None, currency: str = "CNY", tz: ZoneInfo | None = None
) -> TemplateEnvironment:
    """The one way templates get an environment: sandboxed, strict, block-trimming, with our filters."""
    env = TemplateEnvironment(
        loader=loader,
        autoescape=autoescape,
        undefined=SuggestingUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=True,
        finalize=_finalize,
    )
    register_filters(env, currency=currency, tz=tz or zone("Asia/Shanghai"))
    env.filters.update(limits.bounded_filters(env.filters))
    return env


def _finalize(value: Any) -> Any:
    """``{{ customer.city }}`` for a customer without a city prints nothing, not "None"."""
    return "" if value is None else value


@dataclass(frozen=True, eq=False)
class CompiledTemplate:
    """A compiled template plus where it came from, so that a render error can point at the file and line."""

    template: Template
    file: str | None  # the template file; for inline text the campaign file it came from (if known)
    label: str  # how messages name it: the file path, or e.g. "inline email subject"
    inline: bool
    html: bool
    filenames: set[str]  # the loader's compiled file names (shared): where a render error may point
    #: the ``customer.*`` names it reads (includes and parents too), None if that cannot be told: the audience
    #: statement computes only the facts a campaign's templates read (``orchestrator.template_names``)
    customer_names: frozenset[str] | None = None

    def render(self, context: Mapping[str, Any]) -> str:
        template = self.template
        try:
            try:
                # Template.render, less its per-call copy of the globals ChainMap (flattened once, below): a
                # message renders several small templates, and that copy was most of a subject line's cost
                scope = template.new_context({**self._globals, **context}, shared=True)
                limits.start_render()
                return limits.joined(template.root_render_func(scope))  # type: ignore[attr-defined]
            except Exception:
                template.environment.handle_exception()  # re-raises with template line numbers
        except InputError:
            raise
        except Exception as exc:
            raise self._render_error(exc) from exc

    @cached_property
    def _globals(self) -> dict[str, Any]:
        return dict(self.template.globals)

    def _render_error(self, exc: Exception) -> TemplateRenderError:
        if isinstance(exc, TemplateSyntaxError):  # an included template that does not compile
            hint = _syntax_hint(self.template.environment, exc)
            problem = f"template syntax error: {exc.message}"
            return TemplateRenderError(problem, file=exc.filename, line=exc.lineno, hint=hint)
        filename, line = _template_frame(exc.__traceback__, self.template.filename, self.filenames)
        problem, hint = _describe(exc)
        if filename is not None and filename != self.template.filename:  # raised inside an included template
            return TemplateRenderError(problem, file=filename, line=line, hint=hint)
        return _located(TemplateRenderError, self.file, self.label, self.inline, line, problem, hint)


def _describe(exc: Exception) -> tuple[str, str | None]:
    """What went wrong, in the template author's terms, and what to do about it."""
    if isinstance(exc, limits.TemplateLimitError):
        return str(exc), limits.LIMITS_HINT
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}", SANDBOX_HINT
    if isinstance(exc, UndefinedError):
        return str(exc.message), CONTEXT_HINT
    if isinstance(exc, TemplateNotFound):
        return f"included template {exc.name!r} not found", "includes resolve in the configured template folders"
    return f"{type(exc).__name__}: {exc}", None


_UNKNOWN = re.compile(r"No (filter|test) named '([^']+)'")


def _syntax_hint(env: Environment, exc: TemplateSyntaxError) -> str | None:
    """For an unknown filter or test: the one probably meant, or the list of those there are."""
    match = _UNKNOWN.search(exc.message or "")
    if match is None:
        return None
    kind, name = match.groups()
    known = sorted(n for n in (env.filters if kind == "filter" else env.tests) if not n.startswith("_"))
    suggestion = closest(name, known)
    if suggestion:
        return f"did you mean {suggestion!r}? ({kind}s: {', '.join(known)})"
    return f"the {kind}s are: {', '.join(known)}"


def _located(
    kind: type[InputError], file: str | None, label: str, inline: bool, line: int | None, problem: str, hint: str | None
) -> Any:
    """File templates report file:line; inline ones the campaign file and the line within the inline text."""
    if inline:
        at = f", line {line}" if line else ""
        return kind(f"{label}{at}: {problem}", file=file, hint=hint)
    return kind(problem, file=file, line=line, hint=hint)


def _template_frame(tb: TracebackType | None, own: str | None, filenames: set[str]) -> tuple[str | None, int | None]:
    """The innermost template frame of a render error.

    Jinja rewrites the traceback of an exception raised while rendering so that frames of compiled template
    code carry the template's filename and the template line. We know every filename we compiled, so the
    innermost frame with one of those names is where the template went wrong.
    """
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == own or name in filenames:
            found = (name, tb.tb_lineno)
        tb = tb.tb_next
    return found


class TemplateLoader:
    """Finds, compiles and caches templates for one configuration.

    ``for_campaign(path)`` returns a view that also looks in the campaign file's folder first and names the
    campaign file in errors about inline templates; views share the environment and the compile cache.
    """

    def __init__(
        self,
        roots: Sequence[str | Path],
        *,
        currency: str = "CNY",
        tz: ZoneInfo | None = None,
        files: TemplateFiles | None = None,
    ):
        self.roots = tuple(Path(root) for root in roots)
        self.campaign_file: Path | None = None
        self.files = files or TemplateFiles()
        self._cache: dict[tuple[Path, str, bool], tuple[Stamp, CompiledTemplate]] = {}
        self._filenames: set[str] = set()
        folders = _FolderLoader(self.roots, self._filenames, self.files)
        self._envs = {
            html: make_environment(autoescape=html, loader=folders, currency=currency, tz=tz) for html in (False, True)
        }

    @classmethod
    def from_settings(cls, settings: Any) -> TemplateLoader:
        """Template folders, currency and time zone from ``Settings``."""
        roots = [settings.resolve_path(folder) for folder in settings.templates]
        files = TemplateFiles(tuple(settings.template_suffixes), _protected_files(settings))
        return cls(roots, currency=settings.currency, tz=settings.tz, files=files)

    def for_campaign(self, campaign_file: str | Path | None) -> TemplateLoader:
        view = copy.copy(self)
        view.campaign_file = Path(campaign_file) if campaign_file is not None else None
        return view

    @property
    def search_path(self) -> tuple[Path, ...]:
        first = (self.campaign_file.parent,) if self.campaign_file is not None else ()
        return (*first, *self.roots)

    def environment(self, *, html: bool) -> ImmutableSandboxedEnvironment:
        return self._envs[html]

    def resolve(self, name: str) -> tuple[Path, Path]:
        """``(root, file)`` for a template path written in a campaign file; InputError if missing or unsafe."""
        try:
            found = resolve_template(name, self.search_path, self.files)
        except InputError as exc:
            exc.file = exc.file or self._campaign_name
            raise
        if found is None:
            looked = ", ".join(str(root) for root in self.search_path) or "(no template folders configured)"
            raise InputError(f"template {name!r} not found", file=self._campaign_name, hint=f"looked in {looked}")
        return found

    def load(self, name: str, *, html: bool | None = None) -> CompiledTemplate:
        """The compiled template file ``name``; autoescaped when ``html`` (default: by its extension)."""
        root, path = self.resolve(name)
        html = is_html_name(name) if html is None else html
        key = (root.resolve(), posixpath.normpath(name.replace("\\", "/")), html)
        stamp = _stamp(path)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        source = _read(path, root, self.files)
        compiled = self._compile(source, name=name, filename=str(path), html=html, label=str(path), inline=False)
        self._cache[key] = (stamp, compiled)
        return compiled

    def from_string(self, source: str, *, label: str, html: bool = False) -> CompiledTemplate:
        """Inline text from a campaign file (``text:``, ``subject:``) compiled as a template."""
        return self._compile(source, name=None, filename=f"<{label}>", html=html, label=label, inline=True)

    @property
    def _campaign_name(self) -> str | None:
        return str(self.campaign_file) if self.campaign_file is not None else None

    def _compile(
        self, source: str, *, name: str | None, filename: str, html: bool, label: str, inline: bool
    ) -> CompiledTemplate:
        env = self._envs[html]
        file = self._campaign_name if inline else filename
        self._filenames.add(filename)
        try:
            tree = env.parse(source, name=name, filename=filename)
            code = env.compile(tree, name=name, filename=filename)
        except TemplateSyntaxError as exc:
            problem = f"template syntax error: {exc.message}"
            raise _located(InputError, file, label, inline, exc.lineno, problem, _syntax_hint(env, exc)) from None
        template = env.template_class.from_code(env, code, env.make_globals(None))
        names = template_names.customer_names(env, tree)
        return CompiledTemplate(template, file, label, inline, html, self._filenames, names)


def _protected_files(settings: Any) -> frozenset[Path]:
    """The signing keys (current and previous), the config file and an SQLite database with its journal files:
    never templates, whatever they are named or linked as."""
    from orchestrator.config import database_url  # the config imports nothing of ours; keep it that way

    paths = [settings.resolve_path(SECRET_FILE), settings.resolve_path(PREVIOUS_FILE)]
    if settings.source:
        paths.append(Path(settings.source))
    url = database_url(settings)
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        database = url.removeprefix("sqlite:///").split("?")[0]
        paths += [Path(database + ending) for ending in ("", "-wal", "-shm", "-journal")]
    return frozenset(path.resolve() for path in paths)
