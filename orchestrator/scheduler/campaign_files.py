"""Every campaign file of the campaigns folder, each loaded or with its problems: one bad file never stops the
others from being listed or fired."""

from __future__ import annotations

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


def load_all(service: Orchestrator, folder: Path) -> list[CampaignFile]:
    """Each ``*.yaml`` / ``*.yml`` file of ``folder`` (not its subfolders), by name. A second file declaring a
    campaign name already taken is a problem of that file: both would fire the same runs. A file renamed or deleted
    while the folder is being loaded is left out, as if it had gone a moment earlier."""
    files: list[CampaignFile] = []
    owners: dict[str, str] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        entry = CampaignFile(str(path))
        try:
            entry.plan = service.load(path)
        except InputError as exc:
            entry.problems = list(exc.problems) if isinstance(exc, InputErrors) else [exc]
        except FileNotFoundError:
            if not path.exists():
                continue  # renamed or deleted between listing and reading (or between the loader's reads of it)
            raise
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
