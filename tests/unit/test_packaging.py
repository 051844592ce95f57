"""The wheel carries what an installed jobqueue needs besides its code: the SQL migrations.

Built from a copy of the sources, the way the Dockerfile's ``pip install .`` builds it, so
nothing is written into the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from jobqueue.store.migrations import DEFAULT_DIRECTORY, read_migrations

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_every_migration(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    shutil.copytree(
        REPOSITORY / "jobqueue", source / "jobqueue", ignore=shutil.ignore_patterns("__pycache__")
    )

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True, timeout=300,
    )  # fmt: skip

    (wheel,) = (tmp_path / "dist").glob("jobqueue-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = read_migrations(DEFAULT_DIRECTORY)
    assert migrations
    for migration in migrations:
        assert f"jobqueue/store/schema/{migration.file_name}" in shipped
