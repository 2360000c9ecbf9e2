"""The repository stands alone: nothing in it reaches for a folder beside the checkout."""

import os
import subprocess
from pathlib import Path

from .conftest import REPO_DIR

OUTSIDE = ".." + "/shared"  # spelled in two parts so this file does not match itself
# what a checkout grows that is not the repository's own (CI runs on a copy with no .git, so the walk cannot ask git)
NOT_OURS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache", "out", "build"}


def _repository_files() -> list[Path]:
    if (REPO_DIR / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_DIR,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        return [REPO_DIR / name.decode() for name in listed if name]
    files = []
    for root, dirs, names in os.walk(REPO_DIR):
        dirs[:] = [d for d in dirs if d not in NOT_OURS and not d.endswith(".egg-info")]
        files += [Path(root) / n for n in names]
    return files


def test_no_file_refers_to_a_folder_beside_the_checkout():
    files = _repository_files()
    assert any(p.name == "README.md" and p.parent == REPO_DIR for p in files)  # the listing saw the repository
    offenders = [
        str(p.relative_to(REPO_DIR))
        for p in files
        if p.is_file() and p.stat().st_size < 5_000_000 and OUTSIDE.encode() in p.read_bytes()
    ]
    assert offenders == []
