"""``mmssl push``: upload an export to the Hugging Face Hub with ``huggingface_hub``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled

from mmssl.config import MmsslError
from mmssl.export import export_meta, resolve_export

CARD_FILE = "README.md"


@dataclass(frozen=True)
class UploadPlan:
    """What ``push`` would send: the folder, its files ``(relative path, bytes)``, whether a token is
    available, and the model card's lines about the data (shown by ``--dry-run`` so a user sees
    what the published card says about their data before anything leaves the machine)."""

    folder: Path
    files: list[tuple[str, int]]
    token_found: bool
    card_data_lines: list[str]


def upload_plan(folder: Path) -> list[tuple[str, int]]:
    """``(relative path, bytes)`` of every file an upload of ``folder`` sends, sorted."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())


def card_data_lines(card: str) -> list[str]:
    """The model card's bullet lines of its ``## Pretraining`` section and the recipe's ``data:`` block."""
    lines, section, in_data = [], "", False
    for line in card.splitlines():
        if line.startswith("## "):
            section = line
        elif section == "## Pretraining" and line.startswith("- "):
            lines.append(line)
        if section.startswith("## Recipe"):
            if line.startswith("data:"):
                in_data = True
            elif in_data and line and not line.startswith(" "):
                in_data = False
            if in_data:
                lines.append(line)
    return lines


def _hub_error(e: Exception, repo_id: str) -> MmsslError:
    """A one-sentence reason for a failed upload (the token is never part of it)."""
    if isinstance(e, OfflineModeIsEnabled):
        return MmsslError(
            "the Hugging Face Hub cannot be reached: HF_HUB_OFFLINE is set (unset it to push); nothing was uploaded"
        )
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return MmsslError(
                f"the Hub refused the token for {repo_id} (HTTP {status}): check that it has write "
                "access (`hf auth login` or HF_TOKEN); nothing was uploaded"
            )
        return MmsslError(f"the Hub answered HTTP {status} for {repo_id}: {str(e).splitlines()[0]}")
    return MmsslError(
        f"the Hugging Face Hub cannot be reached ({type(e).__name__}: {e}); check the network, "
        "then push again; nothing was uploaded"
    )


def push(
    path: Path, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None
) -> str | UploadPlan:
    """Create ``repo_id`` (if needed) and upload the export of ``path`` (a run or an export folder).

    The token comes from ``token``, else ``$HF_TOKEN``, else the login saved by ``hf auth login``;
    it is never printed or logged.

    Returns:
        the commit URL, or with ``dry_run`` the :class:`UploadPlan` (nothing is sent).

    Raises:
        MmsslError: no token, the Hub cannot be reached, or it refused the upload.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    folder, _ = resolve_export(Path(path))
    token = token or get_token()
    if dry_run:
        card = folder / CARD_FILE
        lines = card_data_lines(card.read_text()) if card.is_file() else []
        return UploadPlan(folder, upload_plan(folder), token is not None, lines)
    if token is None:
        raise MmsslError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN; nothing was uploaded")
    api = HfApi(token=token)
    meta = export_meta(folder)
    message = f"Upload {meta.get('recipe', 'mmssl')} encoder ({meta.get('step', '?')} steps) pretrained with mmssl"
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except (HTTPError, OfflineModeIsEnabled, ConnectionError) as e:
        raise _hub_error(e, repo_id) from None
    return str(getattr(commit, "commit_url", commit))
