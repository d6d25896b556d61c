"""The campaigns folder as the long-running scheduler sees it: re-read when a file changes, keeping the last valid
version of a file that became invalid.

Changes are found by polling, not by a file-system watcher: every poll hashes the content of each ``*.yaml`` /
``*.yml`` file of the folder (a campaigns folder is a few kilobytes, so this costs nothing), and when any hash
differs, a file appears or one disappears, the whole folder is loaded again (``campaign_files.load_all``, which
also catches two files declaring one campaign name). Polling works the same on every file system (network mounts,
containers' bind mounts, editors that replace a file by renaming a new one over it), where inotify-style watchers
miss events; the delay it adds is the poll interval, a few seconds. Hashing the content rather than comparing
mtime and size also sees an edit that keeps the size within the file system's mtime resolution.

A changed valid file replaces its campaign's schedule; a new one adds it; a deleted one removes it. A file that
becomes invalid is reported (each problem with file and line) and its last valid version stays scheduled until the
file is fixed or deleted. Only the campaign file itself is watched: a changed template is picked up when the file
is next loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.campaign.loader import CampaignPlan
from orchestrator.errors import InputError
from orchestrator.scheduler.campaign_files import CampaignFile, campaign_paths, load_all
from orchestrator.scheduler.replay import unsupported
from orchestrator.service import Orchestrator


@dataclass(frozen=True)
class FolderChange:
    """What one poll found: ``kind`` is added, changed, removed, invalid (the last valid version stays) or
    not-fired (valid, but disabled, without a schedule, or a kind of schedule the scheduler does not fire)."""

    kind: str
    path: str
    campaign: str | None = None
    problems: tuple[InputError, ...] = ()
    note: str | None = None


@dataclass
class CampaignFolder:
    service: Orchestrator
    folder: Path
    hashes: dict[str, str] = field(default_factory=dict)
    files: list[CampaignFile] = field(default_factory=list)  # as last loaded, problems included
    valid: dict[str, CampaignPlan] = field(default_factory=dict)  # path -> the last valid version of that file

    def poll(self) -> list[FolderChange]:
        """Re-read the folder if any file's content changed, appeared or disappeared; the changes found."""
        hashes = _content_hashes(self.folder)
        if hashes == self.hashes:
            return []
        previous_hashes, self.hashes = self.hashes, hashes
        self.files = load_all(self.service, self.folder)
        changes: list[FolderChange] = []
        for path in sorted(set(previous_hashes) - set(hashes)):
            gone = self.valid.pop(path, None)
            changes.append(FolderChange("removed", path, gone.name if gone else None))
        for entry in self.files:
            if previous_hashes.get(entry.path) == hashes.get(entry.path):
                continue
            before = self.valid.get(entry.path)
            if entry.plan is None:
                kept = before.name if before else None
                changes.append(FolderChange("invalid", entry.path, kept, tuple(entry.problems)))
                continue
            self.valid[entry.path] = entry.plan
            kind = "changed" if entry.path in previous_hashes else "added"
            changes.append(FolderChange(kind, entry.path, entry.plan.name, note=_not_fired(entry.plan)))
        return changes

    def firing(self) -> dict[str, CampaignPlan]:
        """Campaign name -> the plan the scheduler fires: each file's last valid version, when it is enabled and
        has a schedule the scheduler fires. A name declared by two files fires from the first (by file name)."""
        plans: dict[str, CampaignPlan] = {}
        for path in sorted(self.valid):
            plan = self.valid[path]
            if _not_fired(plan) is None:
                plans.setdefault(plan.name, plan)
        return plans


def _not_fired(plan: CampaignPlan) -> str | None:
    campaign = plan.campaign
    if not campaign.enabled:
        return "enabled: false"
    if campaign.schedule is None:
        return "no schedule"
    return unsupported(campaign.schedule)


def _content_hashes(folder: Path) -> dict[str, str]:
    """Path -> a hash of its content; a refused entry (a link out of the folder, a pipe) is not read: its hash is
    the reason, so it is reported once, and again only if the reason changes."""
    hashes: dict[str, str] = {}
    for path, refusal in campaign_paths(folder):
        if refusal is not None:
            hashes[str(path)] = "refused: " + refusal.message
            continue
        try:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:  # deleted between listing and reading: gone, as the next poll will also see
            continue
    return hashes
