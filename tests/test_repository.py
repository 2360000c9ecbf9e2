"""The repository stands alone: nothing in it reaches for a folder beside the checkout."""

import subprocess

from .conftest import REPO_DIR

OUTSIDE = ".." + "/shared"  # spelled in two parts so this file does not match itself


def test_no_tracked_file_refers_to_a_folder_beside_the_checkout():
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_DIR,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    offenders = []
    for name in filter(None, files):
        path = REPO_DIR / name.decode()
        if path.is_file() and path.stat().st_size < 5_000_000 and OUTSIDE.encode() in path.read_bytes():
            offenders.append(name.decode())
    assert offenders == []
