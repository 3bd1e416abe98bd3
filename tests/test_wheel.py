"""The built wheel works on its own: migrations ship inside it as package data.

Builds the wheel from this checkout (``python -m build --wheel --no-isolation``, so no
network), installs it into a fresh venv, and runs ``sealfleet db migrate`` and
``db status`` from that venv in a directory outside the checkout.  The fresh venv gets
the test venv's site-packages as a fallback path (a ``.pth`` line, appended after its
own site-packages) so third-party dependencies resolve without a download, while
``sealfleet`` itself must come from the wheel: the test asserts where it was imported
from, and the editable install's hook is not processed for a directory added that way.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SEALFLEET_DEBUG")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_wheel_ships_migrations_and_db_commands_work_from_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist,
                REPO_ROOT, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("sealfleet-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = sorted(p.name for p in (REPO_ROOT / "migrations").glob("*.sql"))
    assert "sealfleet/migrations/0001_initial.sql" in names
    assert {f"sealfleet/migrations/{name}" for name in shipped} <= names
    assert "sealfleet/adapters/store/store.py" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", "--quiet", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                       cwd=tmp_path).stdout.strip())
    (purelib / "zz_test_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")

    where = run(python, "-c", "import sealfleet.adapters.store.migrations as m; "
                "print(m.__file__); print(m.default_migrations_dir())", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    module_file, migrations_dir = (Path(line) for line in where.stdout.splitlines())
    assert module_file.is_relative_to(env_dir), module_file
    assert migrations_dir == purelib / "sealfleet" / "migrations"

    db = tmp_path / "inventory.db"
    sealfleet = env_dir / "bin" / "sealfleet"
    migrate = run(sealfleet, "db", "migrate", "--database", db, cwd=tmp_path)
    assert migrate.returncode == 0, migrate.stderr
    assert "applied 0001_initial" in migrate.stdout
    status = run(sealfleet, "db", "status", "--database", db, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert [line.split()[0] for line in status.stdout.splitlines()[:-1]] == [
        name.removesuffix(".sql") for name in shipped]
    assert status.stdout.splitlines()[-1] == f"{db}: up to date"
