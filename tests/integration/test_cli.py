"""The `seekq` CLI as a user runs it: real processes against the real stack."""

import json
import subprocess
import sys

from storage.migrate import upgrade
from tests.conftest import Stack, stack_env, unique


def seekq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seekq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_keys_submit_jobs_audit(stack: Stack) -> None:
    env = stack_env(stack.database_url, stack.redis_db, stack.tmp, SEEKQ_URL=stack.url)
    upgraded = seekq(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    created = seekq(env, "keys", "create", "--tenant", unique("cli"), "--json")
    assert created.returncode == 0, created.stderr
    env["SEEKQ_API_KEY"] = json.loads(created.stdout)["api_key"]

    spec = '{"payload": "from the cli"}'
    submitted = seekq(env, "submit", "ping", spec, "--wait", "30", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded" and job["result"] == {"payload": "from the cli"}

    listed = json.loads(seekq(env, "jobs", "list", "--json").stdout)
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    shown = seekq(env, "jobs", "show", job["id"])
    assert job["id"] in shown.stdout and "succeeded" in shown.stdout
    audit = json.loads(seekq(env, "audit", "--json").stdout)
    assert audit["data"][0]["job_id"] == job["id"]


def test_cli_reports_errors_without_tracebacks(stack: Stack) -> None:
    env = stack_env(stack.database_url, stack.redis_db, stack.tmp, SEEKQ_URL=stack.url)
    env["SEEKQ_API_KEY"] = stack.key("acme")
    bad_spec = seekq(env, "submit", "embed", '{"input": []}')
    assert bad_spec.returncode == 1 and "422" in bad_spec.stdout
    assert "Traceback" not in bad_spec.stdout + bad_spec.stderr
    not_json = seekq(env, "submit", "embed", "{oops")
    assert not_json.returncode == 2 and "not readable JSON" in not_json.stderr + not_json.stdout
    missing = seekq(env, "jobs", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1 and "404" in missing.stdout
    env["SEEKQ_URL"] = "http://127.0.0.1:1"
    down = seekq(env, "jobs", "list")
    assert down.returncode == 1 and "cannot reach the gateway" in down.stdout
    bad_queue = seekq(env, "worker", "--queues", "no.such.queue")
    assert bad_queue.returncode == 2 and "unknown queues" in bad_queue.stderr + bad_queue.stdout
    bad_pool = seekq(env, "worker", "--gpu", "0", "--pool", "prefork")
    assert bad_pool.returncode == 2 and "CUDA-safe" in bad_pool.stderr + bad_pool.stdout


def test_migrations_are_idempotent(stack: Stack) -> None:
    upgrade(stack.database_url)
    upgrade(stack.database_url)
