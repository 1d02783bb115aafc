"""Submit deploy/bench/engine_ceiling.sql: the engine-ceiling job of ``intentflow bench``.

Only the client runs Python (``flink run -py`` needs a script): it fills the SQL template, sets the
same job-level settings as the IntentFlow job (checkpoint interval, exactly-once, parallelism, the
Kafka connector jar) and submits the INSERT. The job graph itself is pure Java/SQL, so its rate is
what Flink + Kafka + RocksDB reach on this machine without the Python operators.
"""
from __future__ import annotations

import argparse
import re
import string
from pathlib import Path


def statements(sql_text: str, variables: dict[str, str]) -> list[str]:
    """The template's statements with ${...} filled (comments dropped, split on ';')."""
    text = "\n".join(line for line in sql_text.splitlines() if not line.lstrip().startswith("--"))
    text = string.Template(text).substitute(variables)
    return [s.strip() for s in text.split(";") if s.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sql", default=str(Path(__file__).with_suffix(".sql")))
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="Flink configuration")
    args = p.parse_args(argv)

    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    for item in args.conf:
        key, _, value = item.partition("=")
        t_env.get_config().set(key, value)
    stmts = statements(Path(args.sql).read_text(), dict(v.split("=", 1) for v in args.var))
    for stmt in stmts[:-1]:
        t_env.execute_sql(stmt)
    result = t_env.execute_sql(stmts[-1])   # the INSERT: submits the job
    job_id = str(result.get_job_client().get_job_id())
    if re.fullmatch(r"[0-9a-f]{32}", job_id):
        print(f"JobID {job_id}", flush=True)


if __name__ == "__main__":
    main()
