"""Configuration from the environment and `.env`: production refuses unsafe defaults, by name.

Each case runs `manage.py check` (or reads settings) in a subprocess with a clean environment,
from a copy of manage.py and taskflow_project/ in a temporary directory: settings look for
`.env` beside them, so a developer's own /work/main/.env cannot change the outcome, and the
`.env` test can write one without touching the repository. The `tasks` app is imported from
the repository itself.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_DSN = "postgres://taskflow:secret@db.internal:5432/taskflow"
SAFE_PRODUCTION = {
    "ENV": "production",
    "SECRET_KEY": "x7-not-the-development-key-but-a-long-random-string-for-tests",
    "DB_DSN": POSTGRES_DSN,
    "ALLOWED_HOSTS": "taskflow.example.com",
}
PRINT_SETTINGS = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({"ENV": settings.ENV, "ENGINE": db["ENGINE"], "NAME": str(db["NAME"]), "HOST": db.get("HOST"),
                  "ALLOWED_HOSTS": settings.ALLOWED_HOSTS, "LOG_LEVEL": settings.LOG_LEVEL}))
"""


def copy_project(into: Path) -> Path:
    shutil.copy2(ROOT / "manage.py", into / "manage.py")
    shutil.copytree(ROOT / "taskflow_project", into / "taskflow_project", ignore=shutil.ignore_patterns("__pycache__"))
    return into


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


def clean_env(**variables: str) -> dict[str, str]:
    """Only what a process needs to start, plus `variables`: nothing leaks in from the test run."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **variables,
    }


def manage_check(project: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=project,
        env=clean_env(**variables),
        capture_output=True,
        text=True,
        timeout=60,
    )


def loaded_settings(project: Path, **variables: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=project,
        env=clean_env(DJANGO_SETTINGS_MODULE="taskflow_project.settings", **variables),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The ImproperlyConfigured message a refused start printed."""
    assert result.returncode != 0, f"expected a refusal:\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if "ImproperlyConfigured" in line]
    assert lines, result.stderr
    return lines[-1]


def test_development__starts_with_no_configuration_on_sqlite(project):
    result = manage_check(project)

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    loaded = loaded_settings(project)
    assert loaded["ENV"] == "development"
    assert loaded["ENGINE"] == "django.db.backends.sqlite3"
    assert str(loaded["NAME"]).startswith(str(project / "var"))


def test_production__all_required_settings_given_passes(project):
    result = manage_check(project, **SAFE_PRODUCTION)

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production__without_secret_key_refused_naming_it(project):
    env = {k: v for k, v in SAFE_PRODUCTION.items() if k != "SECRET_KEY"}

    message = refusal(manage_check(project, **env))

    assert "SECRET_KEY" in message
    assert "DB_DSN" not in message
    assert "ALLOWED_HOSTS" not in message


@pytest.mark.parametrize(
    "db_dsn",
    [
        "sqlite:////tmp/taskflow.sqlite3",
        "",  # empty: falls back to the SQLite default
    ],
)
def test_production__sqlite_database_refused_naming_db_dsn(project, db_dsn):
    message = refusal(manage_check(project, **{**SAFE_PRODUCTION, "DB_DSN": db_dsn}))

    assert "DB_DSN" in message
    assert "SECRET_KEY" not in message


def test_production__without_allowed_hosts_refused_naming_it(project):
    env = {k: v for k, v in SAFE_PRODUCTION.items() if k != "ALLOWED_HOSTS"}

    message = refusal(manage_check(project, **env))

    assert "ALLOWED_HOSTS" in message


def test_production__every_problem_named_at_once(project):
    message = refusal(manage_check(project, ENV="production", DEBUG="true"))

    for name in ("SECRET_KEY", "DB_DSN", "ALLOWED_HOSTS", "DEBUG"):
        assert name in message


def test_database_url__accepted_as_an_alias_of_db_dsn(project):
    env = {k: v for k, v in SAFE_PRODUCTION.items() if k != "DB_DSN"}

    result = manage_check(project, **env, DATABASE_URL=POSTGRES_DSN)
    loaded = loaded_settings(project, DATABASE_URL="postgres://u@alias-host:5432/alias_db")

    assert result.returncode == 0, result.stderr
    assert (loaded["ENGINE"], loaded["HOST"], loaded["NAME"]) == (
        "django.db.backends.postgresql",
        "alias-host",
        "alias_db",
    )


def test_database_url__db_dsn_wins_when_both_are_set(project):
    loaded = loaded_settings(
        project,
        DB_DSN="postgres://u@seed-host:5432/seed_db",
        DATABASE_URL="postgres://u@alias-host:5432/alias_db",
    )

    assert (loaded["HOST"], loaded["NAME"]) == ("seed-host", "seed_db")


@pytest.mark.parametrize("value", ["bogus", "prod", "Production"])
def test_env__unknown_value_refused_naming_it(project, value):
    message = refusal(manage_check(project, ENV=value))

    assert "ENV" in message
    assert repr(value) in message


def test_dotenv__values_are_read_and_the_real_environment_wins(tmp_path):
    project = copy_project(tmp_path)
    (project / ".env").write_text(
        "# as .env.example\nDB_DSN=postgres://u@dotenv-host:5432/dotenv_db\nLOG_LEVEL=warning\nALLOWED_HOSTS=a.example,b.example\n"
    )

    from_file = loaded_settings(project)
    overridden = loaded_settings(project, DB_DSN="postgres://u@env-host:5432/env_db")

    assert (from_file["HOST"], from_file["NAME"]) == ("dotenv-host", "dotenv_db")
    assert from_file["LOG_LEVEL"] == "WARNING"
    assert from_file["ALLOWED_HOSTS"] == ["a.example", "b.example"]
    assert (overridden["HOST"], overridden["NAME"]) == ("env-host", "env_db")
    assert overridden["LOG_LEVEL"] == "WARNING"


def test_dotenv__production_refusal_applies_to_values_from_the_file(tmp_path):
    project = copy_project(tmp_path)
    (project / ".env").write_text("ENV=production\nSECRET_KEY=from-the-dotenv-file-long-and-random-enough\n")

    message = refusal(manage_check(project))

    assert "SECRET_KEY" not in message  # the file's key counted
    assert "DB_DSN" in message
