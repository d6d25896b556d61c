"""Every campaign file of the campaigns folder, each loaded or with its problems: one bad file never stops the
others from being listed or fired."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.campaign.loader import CampaignPlan
from orchestrator.errors import InputError, InputErrors
from orchestrator.service import Orchestrator

SUFFIXES = (".yaml", ".yml")


@dataclass
class CampaignFile:
    path: str
    plan: CampaignPlan | None = None
    problems: list[InputError] = field(default_factory=list)

    @property
    def fires(self) -> bool:
        """A valid, enabled campaign with a schedule."""
        return self.plan is not None and self.plan.campaign.enabled and self.plan.campaign.schedule is not None


def campaigns_folder(service: Orchestrator, override: str | None) -> Path:
    """``--campaigns``, else the config's ``campaigns:`` (relative to the config file's folder)."""
    folder = Path(override) if override else service.settings.resolve_path(service.settings.campaigns)
    folder = folder.resolve()
    if folder.is_relative_to(Path.cwd()):  # shown as people type it: config/../campaigns reads as campaigns
        folder = folder.relative_to(Path.cwd())
    if not folder.is_dir():
        raise InputError(
            f"the campaigns folder {folder} does not exist or is not a folder",
            hint="set campaigns: in the config, or give --campaigns DIR",
        )
    return folder


def campaign_paths(folder: Path) -> list[tuple[Path, InputError | None]]:
    """Each ``*.yaml`` / ``*.yml`` entry of ``folder`` (not its subfolders), by name, with why it is refused (None:
    to be loaded).

    Refused, naming only the file and never reading it: a symbolic link to anything outside the folder (whoever can
    add a link to the campaigns folder must not get a file they cannot read, /etc/shadow say, quoted back in
    error messages by the scheduler's user), a link to nothing, and anything that is not a regular file (a FIFO
    would block the read for ever). A link to another file of the folder is read like any file. A subfolder is
    not a campaign file and is passed over, as before."""
    inside = folder.resolve()
    entries: list[tuple[Path, InputError | None]] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES):
        refusal = _refusal(path, inside)
        if refusal == "":
            continue
        entries.append((path, InputError(refusal, file=str(path)) if refusal else None))
    return entries


def _refusal(path: Path, inside: Path) -> str | None:
    """Why ``path`` is not read: a message; None: read it; "": pass it over (a folder, or gone since listed)."""
    try:
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(inside):
                return (
                    "is a symbolic link to a file outside the campaigns folder: refused, not read "
                    "(copy the campaign into the folder instead)"
                )
            if not target.exists():
                return "is a symbolic link to a file that does not exist"
        mode = path.stat().st_mode
    except FileNotFoundError:
        return ""  # renamed or deleted since the folder was listed
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return ""
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device): refused, not read"
    return None


def load_all(service: Orchestrator, folder: Path) -> list[CampaignFile]:
    """Each campaign file of ``folder`` (see ``campaign_paths``), by name. A second file declaring a campaign name
    already taken is a problem of that file: both would fire the same runs. A file renamed or deleted while the
    folder is being loaded is left out, as if it had gone a moment earlier."""
    files: list[CampaignFile] = []
    owners: dict[str, str] = {}
    for path, refusal in campaign_paths(folder):
        entry = CampaignFile(str(path))
        if refusal is not None:
            entry.problems = [refusal]
            files.append(entry)
            continue
        try:
            entry.plan = service.load(path)
        except InputError as exc:
            entry.problems = list(exc.problems) if isinstance(exc, InputErrors) else [exc]
        except FileNotFoundError:
            if not path.exists():
                continue  # gone between listing and reading (or between the loader's reads of it)
            raise
        except OSError as exc:
            entry.problems = [InputError(f"cannot be read: {exc.strerror}", file=str(path))]
        if entry.plan is not None:
            first = owners.setdefault(entry.plan.name, entry.path)
            if first != entry.path:
                entry.problems = [
                    InputError(
                        f"campaign name {entry.plan.name!r} is also declared by {first}",
                        file=entry.path,
                        hint="give each campaign file its own name:",
                    )
                ]
                entry.plan = None
        files.append(entry)
    return files
