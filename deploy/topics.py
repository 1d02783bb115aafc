#!/usr/bin/env python3
"""Create IntentFlow's Kafka topics (idempotent), using confluent_kafka's AdminClient.

    python deploy/topics.py --bootstrap 127.0.0.1:9092 [--partitions 4] \
        [--log-append-time events] [--wait 90] name...

* A topic that exists is left alone (its partition count is reported if it differs from
  --partitions; partitions are never changed here).
* Topics named with --log-append-time get message.timestamp.type=LogAppendTime: the record
  timestamp becomes the broker's arrival time (used to measure end-to-end latency). The setting
  is also applied to such a topic that already exists without it.
* --wait N: first wait up to N seconds for the broker to answer a metadata request.
* --check: only wait for the broker (no topic changes); exit 0 when it answers.

Exit status: 0 on success, 1 on any failure (message on stderr), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import NoReturn

TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"


def log(msg: str) -> None:
    print(f"topics: {msg}", flush=True)


def fail(msg: str) -> NoReturn:
    print(f"topics: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def wait_for_port(bootstrap: str, deadline: float) -> None:
    host, port = _host_port(bootstrap)
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                fail(f"{host}:{port} does not accept connections ({e})")
            time.sleep(0.5)


def wait_for_metadata(admin, deadline: float):
    last = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(1.0, min(5.0, remaining)))
        except Exception as e:  # KafkaException(_TRANSPORT / _TIMED_OUT) while the broker boots
            last = e
        if time.monotonic() >= deadline:
            fail(f"broker did not answer a metadata request in time (last error: {last})")
        time.sleep(0.5)


def describe_topic_configs(admin, names: list[str], deadline: float):
    """Yield (name, config, error) per topic. A topic the broker does not list yet (metadata still
    propagating after a create or a broker restart: UNKNOWN_TOPIC_OR_PART) is asked again until
    ``deadline``."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource, ResourceType

    pending = list(names)
    while pending:
        retry = []
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in pending], request_timeout=30)
        for res, fut in futures.items():
            try:
                yield res.name, fut.result(), None
            except KafkaException as e:
                err = e.args[0]
                if (isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                        and time.monotonic() < deadline):
                    retry.append(res.name)
                else:
                    yield res.name, None, err
        pending = retry
        if pending:
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default=os.environ.get("INTENTFLOW_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--replication-factor", type=int, default=1)
    p.add_argument("--log-append-time", action="append", default=[], metavar="NAME",
                   help="set message.timestamp.type=LogAppendTime on this topic (repeatable)")
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for the broker to answer (default 10)")
    p.add_argument("--check", action="store_true", help="only wait until the broker answers metadata")
    p.add_argument("names", nargs="*", help="topic names")
    args = p.parse_args(argv)

    if not args.check and not args.names:
        p.error("no topic names given")

    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                           ConfigResource, NewTopic, ResourceType)
    except ImportError as e:
        fail(f"confluent_kafka is not importable with {sys.executable} ({e}); run deploy/stack.sh setup")

    deadline = time.monotonic() + args.wait
    wait_for_port(args.bootstrap, deadline)
    # log_level 3 (error): librdkafka's connect-retry chatter stays out of the console.
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "log_level": 3,
                         "socket.connection.setup.timeout.ms": 5000})
    md = wait_for_metadata(admin, deadline)
    if args.check:
        log(f"broker answers at {args.bootstrap} (cluster {md.cluster_id}, {len(md.brokers)} broker(s))")
        return 0

    names = list(dict.fromkeys(args.names))  # de-duplicate, keep order
    unknown_lat = set(args.log_append_time) - set(names)
    if unknown_lat:
        fail(f"--log-append-time names not among the topics: {sorted(unknown_lat)}")

    existing = md.topics
    to_create = []
    for name in names:
        if name in existing and existing[name].error is None:
            n = len(existing[name].partitions)
            note = "" if n == args.partitions else f" (WARNING: has {n} partitions, wanted {args.partitions}; left as is)"
            log(f"exists  {name}: {n} partitions{note}")
        else:
            cfg = {TIMESTAMP_TYPE: LOG_APPEND_TIME} if name in args.log_append_time else {}
            to_create.append(NewTopic(name, num_partitions=args.partitions,
                                      replication_factor=args.replication_factor, config=cfg))

    errors: list[str] = []
    created_with_config: set[str] = set()
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=30, request_timeout=30)
        for name, fut in futures.items():
            try:
                fut.result()
                extra = f", {TIMESTAMP_TYPE}={LOG_APPEND_TIME}" if name in args.log_append_time else ""
                log(f"created {name}: {args.partitions} partitions{extra}")
                created_with_config.add(name)
            except KafkaException as e:
                err = e.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    log(f"exists  {name} (created concurrently)")
                else:
                    errors.append(f"create {name}: {err}")

    # Converge message.timestamp.type on topics that already existed (or raced) without it; topics
    # created above got it at creation.
    to_check = [n for n in dict.fromkeys(args.log_append_time) if n not in created_with_config]
    if to_check:
        for name, cfg, err in describe_topic_configs(admin, to_check, time.monotonic() + 30):
            if err is not None:
                errors.append(f"describe {name}: {err}")
                continue
            current = cfg.get(TIMESTAMP_TYPE)
            if current is not None and current.value == LOG_APPEND_TIME:
                continue
            alter = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
                ConfigEntry(TIMESTAMP_TYPE, LOG_APPEND_TIME, incremental_operation=AlterConfigOpType.SET)])
            try:
                for _, afut in admin.incremental_alter_configs([alter], request_timeout=30).items():
                    afut.result()
                log(f"altered {name}: {TIMESTAMP_TYPE} {current.value if current else None} -> {LOG_APPEND_TIME}")
            except KafkaException as e:
                errors.append(f"alter {name}: {e.args[0]}")

    # Wait until every topic is in the metadata with a leader on each partition, so producers that
    # start right after this script never see UNKNOWN_TOPIC_OR_PART / LEADER_NOT_AVAILABLE.
    ready_deadline = time.monotonic() + 30
    while not errors:
        md = admin.list_topics(timeout=10)
        missing = [n for n in names
                   if n not in md.topics or md.topics[n].error is not None
                   or not md.topics[n].partitions
                   or any(pm.leader < 0 for pm in md.topics[n].partitions.values())]
        if not missing:
            break
        if time.monotonic() >= ready_deadline:
            errors.append(f"topics without leaders after 30 s: {missing}")
            break
        time.sleep(0.3)

    if errors:
        for e in errors:
            print(f"topics: ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
