"""Submit and operate the IntentFlow job on the local Flink cluster (CLI + REST API).

The stack's paths (FLINK_HOME, FLINK_CONF_DIR, the connector jar, PYTHONPATH for thread mode)
come from ``deploy/stack.sh env``: one source of truth for the scripts and the Python tools.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jobs.config import REPO_ROOT, IntentFlowConfig

STACK = REPO_ROOT / "deploy" / "stack.sh"
JOB_FILE = REPO_ROOT / "jobs" / "intent_job.py"


def stack_env() -> dict[str, str]:
    """The variables ``deploy/stack.sh env`` exports, merged over this process's environment."""
    out = subprocess.run(["bash", str(STACK), "env"], check=True, capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        m = re.match(r"^export (\w+)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = " ".join(shlex.split(m.group(2)))  # undo printf %q quoting
    return env


@dataclass(frozen=True)
class FlinkRest:
    """The few Flink REST calls IntentFlow needs (https://nightlies.apache.org/flink/flink-docs-stable/docs/ops/rest_api/)."""
    url: str = "http://localhost:8081"

    def _call(self, path: str, method: str = "GET", body: dict | None = None, timeout: float = 10):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def overview(self) -> dict:
        return self._call("/overview")

    def jobs(self) -> list[dict]:
        return self._call("/jobs/overview")["jobs"]

    def job(self, job_id: str) -> dict:
        return self._call(f"/jobs/{job_id}")

    def vertex_metrics(self, job_id: str, vertex_id: str, names: Sequence[str]) -> dict[str, float]:
        """Aggregated (sum over subtasks) metric values of one vertex."""
        got = self._call(f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics?get={','.join(names)}&agg=sum")
        return {m["id"]: m.get("sum", 0.0) for m in got}

    def operator_watermark(self, job_id: str, vertex_id: str, operator: str) -> tuple[float, float]:
        """(min, max) over subtasks of an operator's ``currentOutputWatermark``: its event-time clock.

        Not the web UI's Watermarks tab: that shows the task's minimum *input* watermark, which for
        the two-input scorer includes the control input even while that input is idle.
        """
        got = self._call(f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics"
                         f"?get={operator}.currentOutputWatermark&agg=min,max")
        return (got[0]["min"], got[0]["max"]) if got else (float("-inf"), float("-inf"))

    def metric_names(self, job_id: str, vertex_id: str) -> list[str]:
        return [m["id"] for m in self._call(f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics")]

    def job_metrics(self, job_id: str, names: Sequence[str]) -> dict[str, float]:
        """Job-level metrics by name, e.g. ``numRestarts`` (names the job does not have are left out)."""
        got = self._call(f"/jobs/{job_id}/metrics?get={','.join(names)}")
        return {m["id"]: float(m["value"]) for m in got if "value" in m}

    def checkpoints(self, job_id: str) -> dict:
        """Checkpoint statistics: ``counts`` (completed/failed/...), ``latest.completed`` and
        ``latest.restored`` (``id``, ``is_savepoint``, ``external_path``; null if the job never restored)."""
        return self._call(f"/jobs/{job_id}/checkpoints")

    def exception_history(self, job_id: str) -> list[dict]:
        """The job's failures, newest first (``exceptionName``, ``timestamp``, ``taskName``, ``endpoint``, ...)."""
        return self._call(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]

    def taskmanagers(self) -> list[dict]:
        return self._call("/taskmanagers")["taskmanagers"]

    def flink_version(self) -> str:
        return self._call("/config").get("flink-version", "?")

    def cancel(self, job_id: str) -> None:
        """Cancel a job; a job that already ended (HTTP 409) is left as it is."""
        try:
            self._call(f"/jobs/{job_id}?mode=cancel", method="PATCH")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def stop_with_savepoint(self, job_id: str, target_dir: str | None = None, timeout_s: float = 120) -> str:
        """Stop the job with a savepoint; returns the savepoint path."""
        body = {"drain": False, "formatType": "CANONICAL"}
        if target_dir:
            body["targetDirectory"] = target_dir
        trigger = self._call(f"/jobs/{job_id}/stop", method="POST", body=body)["request-id"]
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status = self._call(f"/jobs/{job_id}/savepoints/{trigger}")
            if status["status"]["id"] == "COMPLETED":
                op = status["operation"]
                if "failure-cause" in op:
                    raise RuntimeError(f"savepoint failed: {op['failure-cause'].get('stack-trace', '')[:2000]}")
                return op["location"]
            time.sleep(0.5)
        raise TimeoutError(f"savepoint of job {job_id} did not complete in {timeout_s}s")

    def wait_for_state(self, job_id: str, states: Sequence[str], timeout_s: float = 120) -> str:
        deadline = time.time() + timeout_s
        state = "?"
        while time.time() < deadline:
            try:
                job = self.job(job_id)
                state = job["state"]
                if state in states and (state != "RUNNING" or
                                        all(v["status"] == "RUNNING" for v in job["vertices"])):
                    return state
                if state in ("FAILED", "CANCELED") and state not in states:
                    break
            except (urllib.error.URLError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} is {state}, expected one of {list(states)} within {timeout_s}s; "
                           f"see the TaskManager log under .run/logs")


def submit(cfg: IntentFlowConfig, savepoint: str | None = None, wait_running: bool = True,
           timeout_s: float = 180) -> str:
    """``flink run -d -py jobs/intent_job.py`` on the local cluster; returns the Flink job id.

    The job gets the caller's whole config as a TOML file, so what runs is exactly ``cfg``.
    """
    env = stack_env()
    conf_dir = Path(env.get("INTENTFLOW_RUN_DIR", REPO_ROOT / ".run")) / "jobs"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf_file = conf_dir / f"{cfg.flink.job_name}.toml"
    conf_file.write_text(cfg.to_toml())
    return submit_python(JOB_FILE, ["--config", str(conf_file)], savepoint=savepoint,
                         wait_running=wait_running, timeout_s=timeout_s, env=env)


def submit_python(script: Path, args: Sequence[str] = (), savepoint: str | None = None,
                  wait_running: bool = True, timeout_s: float = 180, env: dict[str, str] | None = None) -> str:
    """``flink run -d -py SCRIPT ARGS`` on the local cluster (any PyFlink job script); returns the job id."""
    env = stack_env() if env is None else env
    py = env.get("INTENTFLOW_PYTHON", sys.executable)
    cmd = [f"{env['FLINK_HOME']}/bin/flink", "run", "-d", "-m", rest_url(env).split("://", 1)[-1],
           "-pyclientexec", py, "-pyexec", py]
    if savepoint:
        cmd += ["-s", savepoint]
    cmd += ["-py", str(script), *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    m = re.search(r"JobID ([0-9a-f]{32})", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"flink run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    job_id = m.group(1)
    if wait_running:
        FlinkRest(rest_url(env)).wait_for_state(job_id, ["RUNNING"], timeout_s)
    return job_id


def rest_url(env: dict[str, str] | None = None) -> str:
    env = stack_env() if env is None else env
    return env.get("INTENTFLOW_REST_URL", "http://localhost:8081")


def running_jobs(rest: FlinkRest, name: str | None = None) -> list[dict]:
    return [j for j in rest.jobs() if j["state"] in ("RUNNING", "CREATED", "INITIALIZING", "RESTARTING")
            and (name is None or j["name"] == name)]


def job_vertex(rest: FlinkRest, job_id: str, name_part: str) -> str:
    for v in rest.job(job_id)["vertices"]:
        if name_part in v["name"]:
            return v["id"]
    raise KeyError(f"no vertex named like {name_part!r} in job {job_id}")
