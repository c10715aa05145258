"""``mmssl push``: upload an export to the Hugging Face Hub with ``huggingface_hub``."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from mmssl.export import export_meta, resolve_export


def upload_plan(folder: Path) -> list[tuple[str, int]]:
    """``(relative path, bytes)`` of every file an upload of ``folder`` sends, sorted."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())


def push(path: Path, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None) -> str | list[tuple[str, int]]:
    """Create ``repo_id`` (if needed) and upload the export of ``path`` (a run or an export folder).

    The token comes from ``token``, else ``$HF_TOKEN``, else the login saved by ``hf auth login``;
    it is never printed or logged.

    Returns:
        the commit URL, or with ``dry_run`` the upload plan (nothing is sent).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    folder, _ = resolve_export(Path(path))
    plan = upload_plan(folder)
    if dry_run:
        return plan
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    meta = export_meta(folder)
    message = f"Upload {meta.get('recipe', 'mmssl')} encoder ({meta.get('step', '?')} steps) pretrained with mmssl"
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    return str(getattr(commit, "commit_url", commit))
