"""``intentflow`` command line: one subcommand per tool.

A subcommand is a ``(name, help, add_arguments, handler)`` entry in :data:`COMMANDS`;
``add_arguments(parser)`` declares its options and ``handler(args, cfg) -> int`` runs it with
the loaded config (every subcommand gets ``--config`` and ``--set section.key=value``).
Adding a command (run, score, bench, stack, ...) is one more entry.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, NamedTuple

from jobs.config import IntentFlowConfig, load_config


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace, IntentFlowConfig], int]


# --- replay ------------------------------------------------------------------------------------

def _replay_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.datasets import DATASETS, FORMATS

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a named dataset under the shared data dir")
    src.add_argument("--path", help="a file to replay (needs --format)")
    p.add_argument("--format", choices=FORMATS, help="format of --path")
    p.add_argument("--limit", type=int, help="produce at most N events (the first N in event time)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speedup", type=float, help="event time runs N times faster than wall time (60: 1 h/min)")
    pace.add_argument("--rate", type=float, help="fixed rate, events per second")
    pace.add_argument("--max-rate", action="store_true", help="as fast as possible (the default)")
    p.add_argument("--topic", help="target topic (default kafka.events_topic)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _replay(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.datasets import resolve_dataset
    from jobs.replay import replay_file

    if args.path and not args.format:
        print("intentflow replay: --path needs --format", file=sys.stderr)
        return 2
    path, fmt = resolve_dataset(args.dataset) if args.dataset else (args.path, args.format)
    summary = replay_file(cfg, path, fmt, topic=args.topic, speedup=args.speedup, rate=args.rate,
                          limit=args.limit, progress=not args.no_progress)
    print(json.dumps(summary.as_dict()) if args.json else summary)
    return 130 if summary.interrupted else 1 if summary.failed else 0


# --- consume -----------------------------------------------------------------------------------

def _consume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=("recommendation", "cart", "churn", "summary"))
    p.add_argument("--max-messages", type=int, help="stop after N records")
    p.add_argument("--timeout", type=float,
                   help="stop after N s without a record (summary: overall limit, default 30)")
    p.add_argument("--from-beginning", action="store_true", help="rewind to the start of the topic")


def _consume(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.consumers import CONSUMERS, summarize

    if args.which == "summary":
        print_summary(summarize(cfg, args.timeout or 30.0))
        return 0
    counts = CONSUMERS[args.which](cfg, max_messages=args.max_messages, timeout_s=args.timeout,
                                   from_beginning=args.from_beginning)
    print(f"{args.which}: {counts['records']} records, {counts['actions']} actions, "
          f"{counts['undecodable']} undecodable", file=sys.stderr)
    return 0


def print_summary(result: dict, out=print) -> None:
    """Human-readable :func:`jobs.consumers.summarize` result (used by ``consume summary`` and demos)."""
    for topic, entry in result["topics"].items():
        if topic in result["missing"]:
            out(f"{topic}: (topic missing)")
            continue
        labels = ", ".join(f"{k}={v}" for k, v in entry["labels"].most_common())
        bad = f", {entry['undecodable']} undecodable" if entry["undecodable"] else ""
        out(f"{topic}: {entry['count']} records{bad}{f' [{labels}]' if labels else ''}")
        for record in entry["samples"]:
            out(f"    {_short(record)}")
    if not result["complete"]:
        out("(summary incomplete: timed out before the end of every partition)")


def _short(record: dict, width: int = 200) -> str:
    text = json.dumps(record, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
    return text if len(text) <= width else text[: width - 3] + "..."


# --- score -------------------------------------------------------------------------------------

def _score_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.datasets import FORMATS

    p.add_argument("--input", required=True, help="the file to score")
    p.add_argument("--format", required=True, choices=FORMATS, help="format of --input")
    p.add_argument("--output", required=True, help="JSON lines, one per scored event, in event-time order ('-' = stdout)")
    p.add_argument("--limit", type=int, help="score only the first N events (in event time)")
    p.add_argument("--json", action="store_true", help="print the summary (stderr) as JSON")


def _score(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.score import score_file

    from udfs.model import ModelLoadError

    try:
        summary = score_file(cfg, args.input, args.format, args.output, limit=args.limit)
    except (OSError, ValueError, ModelLoadError) as exc:   # missing/unreadable file, bad header, bad model
        print(f"intentflow score: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict()) if args.json else summary, file=sys.stderr)
    return 0


# --- run / stop / demo -------------------------------------------------------------------------

def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-savepoint", metavar="PATH", help="resume from a savepoint (keeps every user's state)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted, without waiting for RUNNING")


def _run(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.flink import rest_url, stack_env, submit

    job_id = submit(cfg, savepoint=args.from_savepoint, wait_running=not args.no_wait)
    print(f"job {job_id} submitted; web UI: {rest_url(stack_env())}/#/job/running/{job_id}/overview")
    return 0


def _stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-id", help="default: the running job named flink.job_name")
    p.add_argument("--savepoint", action="store_true", help="stop with a savepoint (for upgrades) instead of cancelling")


def _stop(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.flink import FlinkRest, rest_url, running_jobs, stack_env

    rest = FlinkRest(rest_url(stack_env()))
    ids = [args.job_id] if args.job_id else [j["jid"] for j in running_jobs(rest, cfg.flink.job_name)]
    if not ids:
        print(f"no running job named {cfg.flink.job_name!r}", file=sys.stderr)
        return 1
    for job_id in ids:
        if args.savepoint:
            print(f"job {job_id} stopped with savepoint {rest.stop_with_savepoint(job_id)}")
        else:
            rest.cancel(job_id)
            print(f"job {job_id} cancelled")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.datasets import DATASETS

    p.add_argument("--dataset", default="taobao-sample", choices=sorted(DATASETS))
    p.add_argument("--limit", type=int, help="replay only the first N events (event-time order)")
    p.add_argument("--no-malformed", action="store_true", help="do not send the 3 malformed demo records")
    p.add_argument("--json", help="also write the report to this JSON file")


def _demo(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.demo import run_demo

    report = run_demo(cfg, args.dataset, args.limit, malformed=not args.no_malformed)
    print(f"\n=== IntentFlow demo: {report['dataset']} ===")
    print(f"events in: {report['events_in']} = scored {report['scored']} + dead-lettered "
          f"{report['dead_lettered']} {report['dlq_by_reason']} + duplicates skipped {report['duplicates_skipped']}")
    print(f"throughput: {report['events_per_s']} events/s (replay start -> last record accounted); "
          f"wall time {report['wall_s']} s")
    print_summary(report["summary"])
    print(f"\nFlink web UI: {report['web_ui']}  (job {report['job_id']} keeps RUNNING; "
          f"`intentflow stop` cancels it, `bash deploy/stack.sh down` stops everything)")
    if args.json:
        report = {k: v for k, v in report.items() if k != "summary"}
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


# --- forget ------------------------------------------------------------------------------------

def _forget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("user_id", nargs="+", help="user id(s) whose state the job must purge")
    p.add_argument("--no-wait", action="store_true", help="return once requested, without waiting for the confirmation")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the confirmations")


def _forget(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.forget import await_confirmations, request_forget

    ids = {request_forget(cfg, user): user for user in args.user_id}
    print(f"requested: {', '.join(f'{u} ({r})' for r, u in ids.items())} on {cfg.kafka.forget_topic}")
    if args.no_wait:
        return 0
    try:
        confirmed = await_confirmations(cfg, set(ids), args.timeout)
    except TimeoutError as exc:
        print(f"intentflow forget: {exc} (is the job running?)", file=sys.stderr)
        return 1
    for rec in confirmed.values():
        held = (f"purged {rec['events_forgotten']} events" + (f", scored {rec['pending_scored']} pending first"
                if rec["pending_scored"] else "")) if rec["had_state"] else "no state held"
        print(f"forgotten: user {rec['user_id']} ({held})")
    return 0


# --- bench -------------------------------------------------------------------------------------

def _bench_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.bench import DEFAULT_BATCH_SIZES, BenchOptions
    from jobs.datasets import DATASETS

    d = BenchOptions()
    p.add_argument("--users", type=int, default=d.users, help="clone the real sessions to this many users")
    p.add_argument("--max-events", type=int, default=d.max_events, help="most events to encode for the run")
    p.add_argument("--peak-s", type=float, default=d.peak_s, help="seconds at the peak (bounded backlog)")
    p.add_argument("--fixed-s", type=float, default=d.fixed_s, help="seconds at the fixed rate (0: skip)")
    p.add_argument("--rate-fraction", type=float, default=d.rate_fraction, help="fixed rate as a fraction of the peak")
    p.add_argument("--warmup-s", type=float, default=d.warmup_s, help="seconds of each phase left out of the figures")
    p.add_argument("--backlog-s", type=float, default=d.backlog_s, help="peak: seconds of work kept waiting in Kafka")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s, help="most seconds to wait for outputs")
    p.add_argument("--partitions", type=int, default=d.partitions, help="partitions of the run's topics")
    p.add_argument("--no-engine", action="store_true", help="skip the engine ceiling (SQL job without Python)")
    p.add_argument("--no-model", action="store_true", help="skip the model ceiling")
    p.add_argument("--no-python", action="store_true", help="skip the Python-path ceiling (scorer work without PyFlink)")
    p.add_argument("--python-s", type=float, default=d.python_s, help="seconds of the Python-path ceiling")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"), help="model ceiling device")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), help="model ceiling batch sizes")
    p.add_argument("--model-min-s", type=float, default=d.model_min_s, help="seconds per model batch size")
    p.add_argument("--profile-s", type=float, default=0.0,
                   help="py-spy the TaskManager's Python for N s of the job's peak phase (needs py-spy in the venv)")
    p.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS), help="the real sessions to clone")
    p.add_argument("--label", default="", help="goes into the JSON and its file name (e.g. noisy-shared-machine)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'shared machine, not representative')")
    p.add_argument("--output", help="JSON file (default deploy/bench/results/<run>[-label].json)")


def _bench(args: argparse.Namespace, cfg: IntentFlowConfig) -> int:
    from jobs.bench import BenchOptions, default_output, format_table, run_bench, write_document

    opts = BenchOptions(users=args.users, max_events=args.max_events, peak_s=args.peak_s, fixed_s=args.fixed_s,
                        rate_fraction=args.rate_fraction, warmup_s=args.warmup_s, backlog_s=args.backlog_s,
                        drain_timeout_s=args.drain_timeout, partitions=args.partitions,
                        engine=not args.no_engine, model=not args.no_model,
                        python=not args.no_python, python_s=args.python_s, device=args.device,
                        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",") if b.strip()),
                        model_min_s=args.model_min_s, profile_s=args.profile_s, dataset=args.dataset,
                        label=args.label, note=args.note,
                        output=args.output or "")
    try:
        doc = run_bench(cfg, opts, out=lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("intentflow bench: interrupted (the run's jobs were cancelled and its topics deleted)", file=sys.stderr)
        return 130
    path = write_document(doc, args.output or default_output(doc["run"], args.label))
    print(format_table(doc))
    print(f"\nJSON: {path}")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("replay", "produce a dataset to the events topic in event-time order", _replay_arguments, _replay),
    Command("consume", "run a reference consumer, or summarize the output topics", _consume_arguments, _consume),
    Command("run", "submit the intent job to the local Flink cluster", _run_arguments, _run),
    Command("stop", "cancel the running job, or stop it with a savepoint", _stop_arguments, _stop),
    Command("demo", "end to end on real data: job up, replay, wait, summarize", _demo_arguments, _demo),
    Command("forget", "ask the running job to purge users' state (privacy request) and wait for the confirmation",
            _forget_arguments, _forget),
    Command("score", "score a dataset file offline through the job's scoring path (JSON lines out)",
            _score_arguments, _score),
    Command("bench", "throughput, latency, resources and ceilings of the job on the local stack (JSON + table)",
            _bench_arguments, _bench),
)


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default $INTENTFLOW_CONFIG)")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser = argparse.ArgumentParser(prog="intentflow", description="IntentFlow tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in commands:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (KeyError, ValueError, OSError) as exc:
        print(f"intentflow: config error: {exc}", file=sys.stderr)
        return 2
    return args.handler(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
