"""The Dockerfile and docker-compose.yml cannot be started here (no Docker engine): their
commands are pinned to the ones the test suite runs, and those that no other test runs are
run here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def _compose_commands() -> dict[str, list[str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {name: service["command"] for name, service in compose["services"].items() if "command" in service}


def _dockerfile_cmd() -> list[str]:
    [cmd] = re.findall(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    return list(json.loads(cmd))


def test_deploy__commands_are_the_ones_the_tests_run():
    # gunicorn with gunicorn.conf.py: test_seed_examples; runworkers: test_worker_processes;
    # migrate: below.
    gunicorn = ["gunicorn", "-c", "gunicorn.conf.py", "taskflow_project.wsgi"]
    assert _dockerfile_cmd() == gunicorn
    assert _compose_commands() == {
        "migrate": ["python", "manage.py", "migrate", "--no-input"],
        "api": gunicorn,
        "workers": ["python", "manage.py", "runworkers", "--workers", "5", "--grace", "30"],
    }


def test_deploy__migrate_and_collectstatic_as_the_image_runs_them(tmp_path: Path):
    env = {"PATH": os.environ["PATH"], "ENV": "development", "DB_DSN": f"sqlite:///{tmp_path / 'build.sqlite3'}"}
    for args in (["migrate", "--no-input"], ["collectstatic", "--no-input"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert (ROOT / "staticfiles" / "admin" / "css" / "base.css").is_file()
    assert (ROOT / "staticfiles" / "drf_spectacular_sidecar").is_dir()
