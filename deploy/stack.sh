#!/usr/bin/env bash
# IntentFlow local stack: single-node KRaft Kafka + Flink 2.2 standalone session cluster (from the
# PyFlink wheel), all on loopback, all state under <repo>/.run, all logs under <repo>/.run/logs.
#
#   deploy/stack.sh setup          venv (.venv) + pip install -e '.[dev]' + fetch
#   deploy/stack.sh fetch          Maven-resolve the Kafka broker jars + Flink Kafka connector into the cache
#   deploy/stack.sh up             start Kafka (+ topics) and Flink if not running; wait until ready
#   deploy/stack.sh topics [name…] create the default topics (+ extra names), idempotent
#   deploy/stack.sh status         one line per component; exit 1 if anything is down
#   deploy/stack.sh down           stop Flink, then Kafka; leaves no process behind
#   deploy/stack.sh clean          down + remove .run (data, checkpoints, logs); keeps the download cache
#   deploy/stack.sh env            print `export …` lines: eval "$(deploy/stack.sh env)"
#   deploy/stack.sh logs [N]       print the log folder and tail the latest Kafka + Flink logs
#
# Failure drills (tests/e2e/test_drills.py); each touches only this checkout's processes:
#   deploy/stack.sh kill-taskmanager     SIGKILL this checkout's TaskManager(s), as a crash would
#   deploy/stack.sh restart-taskmanager  SIGKILL any live TaskManager, start a fresh one, wait until
#                                        the JobManager lists it (the standalone cluster never
#                                        restarts a lost TaskManager by itself)
#   deploy/stack.sh stop-kafka | start-kafka | restart-kafka [DOWN_S]
#                                        stop (SIGTERM, controlled shutdown) / start the broker on the
#                                        same data dir; restart-kafka stays down DOWN_S seconds [0]
#
# Environment overrides (defaults in brackets):
#   INTENTFLOW_CACHE [~/.cache/intentflow]   download cache (m2 repo + jars), shared across clones
#   INTENTFLOW_VENV [<repo>/.venv]           INTENTFLOW_PYTHON_BIN [python3.11]  (used by setup)
#   INTENTFLOW_KAFKA_PORT [9092]  INTENTFLOW_KAFKA_CONTROLLER_PORT [9093]
#   INTENTFLOW_FLINK_REST_PORT [8081]  INTENTFLOW_FLINK_RPC_PORT [6123]
#   INTENTFLOW_KAFKA_HEAP ["-Xms256m -Xmx1g"]  INTENTFLOW_TOPIC_PARTITIONS [4]
#   INTENTFLOW_WAIT_S [90]                    bound of every readiness wait
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Paths and constants
# ---------------------------------------------------------------------------------------------
R="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPLOY="$R/deploy"
RUN="$R/.run"
LOGS="$RUN/logs"
CACHE="${INTENTFLOW_CACHE:-$HOME/.cache/intentflow}"
VENV="${INTENTFLOW_VENV:-$R/.venv}"
PY="$VENV/bin/python"

KAFKA_VERSION=4.1.1
CONNECTOR_ARTIFACT="org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2"
KAFKA_LIB="$CACHE/lib/kafka-$KAFKA_VERSION"
CONNECTOR_JAR="$CACHE/lib/flink/flink-sql-connector-kafka-5.0.0-2.2.jar"

KAFKA_PORT="${INTENTFLOW_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${INTENTFLOW_KAFKA_CONTROLLER_PORT:-9093}"
REST_PORT="${INTENTFLOW_FLINK_REST_PORT:-8081}"
RPC_PORT="${INTENTFLOW_FLINK_RPC_PORT:-6123}"
KAFKA_HEAP="${INTENTFLOW_KAFKA_HEAP:--Xms256m -Xmx1g}"
PARTITIONS="${INTENTFLOW_TOPIC_PARTITIONS:-4}"
WAIT_S="${INTENTFLOW_WAIT_S:-90}"

BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
REST_URL="http://localhost:$REST_PORT"
DEFAULT_TOPICS=(events intent.recommendation intent.cart intent.churn events.dlq users.forget users.forgotten)
LOG_APPEND_TIME_TOPICS=(events)

KAFKA_DIR="$RUN/kafka"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
FLINK_RUN="$RUN/flink"
FLINK_CONF="$FLINK_RUN/conf"
FLINK_LIB="$FLINK_RUN/lib"      # FLINK_LIB_DIR: the wheel's lib/*.jar + opt/flink-python (see config.yaml.tmpl)
FLINK_PIDS="$FLINK_RUN/pid"
IDENT=intentflow   # FLINK_IDENT_STRING: fixed, so pid/log names do not depend on $USER
JM_PID_FILE="$FLINK_PIDS/flink-$IDENT-standalonesession.pid"
TM_PID_FILE="$FLINK_PIDS/flink-$IDENT-taskexecutor.pid"

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
say()  { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die()  { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

tail_log() {  # tail_log FILE [N]: print the end of a log to stderr (for failures)
    local f="$1" n="${2:-40}"
    if [[ -s "$f" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
        tail -n "$n" "$f" >&2
        printf -- '-----\n' >&2
    else
        printf -- '----- %s: missing or empty -----\n' "$f" >&2
    fi
}

latest() {  # latest GLOB: newest matching file, or nothing
    local f
    f="$(ls -1t $1 2>/dev/null | head -n 1 || true)"
    [[ -n "$f" ]] && printf '%s\n' "$f"
    return 0
}

port_open() {  # port_open PORT [HOST]
    (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# A pid is "ours" when it is alive, a java process, and its command line names this checkout's
# run directory (every process we start carries $RUN in its arguments).
ours() {
    local pid="$1"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == java ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$RUN/"
}

pids_from() {  # pids_from PIDFILE: the live, ours pids listed in it
    local f="$1" p
    [[ -f "$f" ]] || return 0
    while IFS= read -r p || [[ -n "$p" ]]; do
        ours "$p" && printf '%s\n' "$p"
    done <"$f"
    return 0
}

kafka_pid()  { pids_from "$KAFKA_PID_FILE" | head -n 1; }
jm_pids()    { pids_from "$JM_PID_FILE"; }
tm_pids()    { pids_from "$TM_PID_FILE"; }

wait_reaped() {  # best effort: give init a moment to reap exited pids (so `pgrep java` shows no zombie)
    local p t=0
    for p in "$@"; do
        while [[ -e "/proc/$p" ]] && (( t < 30 )); do sleep 0.1; t=$((t + 1)); done
    done
    return 0
}

# Daemons of this stack that no pid file knows (e.g. a second TaskManager started by hand): JVMs whose
# command line names $RUN/ AND runs one of the three daemon main classes. Clients (`flink run`, tools)
# are never touched.
stray_java_pids() {
    local p
    for p in $(pgrep -f -- "$RUN/" 2>/dev/null || true); do
        [[ "$p" == "$$" ]] && continue
        ours "$p" || continue
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null \
            | grep -qE ' (kafka\.Kafka|org\.apache\.flink\.runtime\.entrypoint\.StandaloneSessionClusterEntrypoint|org\.apache\.flink\.runtime\.taskexecutor\.TaskManagerRunner) ' \
            && printf '%s\n' "$p"
    done
    return 0
}

check_paths() {
    [[ "$R" != *[[:space:]]* ]] || die "the repo path '$R' contains whitespace; Flink's shell scripts do not support that"
}

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"; }

need_venv() {
    [[ -x "$PY" ]] || die "no virtualenv at $VENV; run: bash deploy/stack.sh setup"
}

# FLINK_HOME (the Flink distribution inside the PyFlink wheel) and the venv's site-packages.
resolve_python_paths() {
    need_venv
    [[ -n "${FLINK_HOME_RESOLVED:-}" ]] && return 0
    local out
    out="$("$PY" - <<'PY'
import importlib.util, os, sysconfig
spec = importlib.util.find_spec("pyflink")
print(os.path.dirname(spec.origin) if spec else "")
print(sysconfig.get_paths()["purelib"])
PY
)" || die "could not run $PY"
    FLINK_HOME_RESOLVED="$(sed -n 1p <<<"$out")"
    SITE_PACKAGES="$(sed -n 2p <<<"$out")"
    [[ -n "$FLINK_HOME_RESOLVED" && -x "$FLINK_HOME_RESOLVED/bin/start-cluster.sh" ]] \
        || die "apache-flink is not installed in $VENV (no pyflink/bin/start-cluster.sh); run: bash deploy/stack.sh setup"
    # pemja (THREAD mode) embeds CPython in the TaskManager JVM and does not see the venv's
    # site-packages unless they are on PYTHONPATH ("No module named 'pemja'").
    # deploy/flink/python holds a sitecustomize.py that imports onnxruntime while the embedded
    # interpreter starts (a later import from an operator thread deadlocks; see that file).
    THREAD_PYTHONPATH="$DEPLOY/flink/python:$SITE_PACKAGES:$R"
}

# The environment every Flink script (start/stop-cluster.sh, flink run) must see.
export_flink_env() {
    resolve_python_paths
    export FLINK_HOME="$FLINK_HOME_RESOLVED"
    export FLINK_CONF_DIR="$FLINK_CONF"
    export FLINK_LIB_DIR="$FLINK_LIB"
    export FLINK_LOG_DIR="$LOGS"
    export FLINK_PID_DIR="$FLINK_PIDS"
    export FLINK_IDENT_STRING="$IDENT"
    export PYTHONPATH="$THREAD_PYTHONPATH"
    export TMPDIR="$FLINK_RUN/tmp"
    unset FLINK_ENV_JAVA_OPTS || true
}

# render TEMPLATE DEST KEY=VALUE...: substitute @KEY@ placeholders; fail on any left unresolved.
render() {
    local tmpl="$1" dest="$2"; shift 2
    python3 - "$tmpl" "$dest" "$@" <<'PY'
import re, sys, os
tmpl, dest, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(tmpl).read()
for kv in pairs:
    k, _, v = kv.partition("=")
    text = text.replace(f"@{k}@", v)
left = sorted(set(re.findall(r"@[A-Z][A-Z0-9_]*@", text)))
if left:
    sys.exit(f"render {tmpl}: unresolved placeholders {left}")
tmp = dest + ".tmp"
with open(tmp, "w") as f:
    f.write(text)
os.replace(tmp, dest)
PY
}

lock() {  # serialize state-changing commands of this checkout (fd 9; closed for every daemon we start)
    mkdir -p "$RUN"
    exec 9>"$RUN/.stack.lock"
    flock -w 600 9 || die "another deploy/stack.sh holds $RUN/.stack.lock"
}

# ---------------------------------------------------------------------------------------------
# setup / fetch
# ---------------------------------------------------------------------------------------------
cmd_setup() {
    check_paths
    local pybin="${INTENTFLOW_PYTHON_BIN:-python3.11}"
    if [[ ! -x "$PY" ]]; then
        command -v "$pybin" >/dev/null 2>&1 || die "$pybin not found (the project needs Python 3.11; set INTENTFLOW_PYTHON_BIN)"
        "$pybin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
            || die "$pybin is not Python 3.11 ($("$pybin" --version 2>&1))"
        say "creating virtualenv $VENV ($("$pybin" --version 2>&1))"
        "$pybin" -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip
    fi
    local marker="$VENV/.intentflow-installed" want
    want="$(sha256sum "$R/pyproject.toml" | cut -d' ' -f1)"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        say "venv up to date with pyproject.toml (editable install present)"
    else
        say "pip install -e '.[dev]' (into $VENV)"
        if (cd "$R" && "$PY" -m pip install -q -e '.[dev]'); then
            printf '%s\n' "$want" >"$marker"
        else
            warn "editable install failed (project packages incomplete?); installing the dependencies from pyproject.toml directly"
            local deps
            deps="$("$PY" - "$R/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
for d in p.get("dependencies", []) + p.get("optional-dependencies", {}).get("dev", []):
    print(d)
PY
)"
            mapfile -t deps_arr <<<"$deps"
            "$PY" -m pip install -q "${deps_arr[@]}"
            warn "dependencies installed, but the project itself is NOT installed; rerun setup once jobs/ udfs/ schemas/ models/ are complete"
        fi
    fi
    cmd_fetch
}

# Maven 3.8 (Debian) prints bare ANSI resets even with -B -q; keep the console clean.
strip_ansi() { sed -e 's/\x1b\[[0-9;]*m//g'; }

cmd_fetch() {
    check_paths
    local pom="$DEPLOY/maven/pom.xml" kafka_marker="$KAFKA_LIB/.intentflow-complete"
    local conn_marker="$CONNECTOR_JAR.intentflow-complete" want
    want="$(sha256sum "$pom" | cut -d' ' -f1)"
    local need_kafka=1 need_conn=1
    [[ -f "$kafka_marker" && "$(cat "$kafka_marker")" == "$want" ]] && need_kafka=0
    [[ -f "$conn_marker" && -s "$CONNECTOR_JAR" ]] && need_conn=0
    if (( ! need_kafka && ! need_conn )); then
        say "fetch: cache complete ($CACHE)"
        return 0
    fi
    need_cmd mvn "Maven 3.8+ is needed to fetch the Kafka broker and connector jars"
    need_cmd java "Java 17 is needed"
    mkdir -p "$CACHE/lib/flink"
    # The cache may be shared by several clones: serialize fetches on it.
    exec 8>"$CACHE/.fetch.lock"
    flock -w 600 8 || die "another fetch holds $CACHE/.fetch.lock"
    local mvn=(mvn -q -B -f "$pom" -Dmaven.repo.local="$CACHE/m2")
    if (( need_kafka )) && ! [[ -f "$kafka_marker" && "$(cat "$kafka_marker")" == "$want" ]]; then
        say "fetch: resolving Kafka $KAFKA_VERSION broker jars into $KAFKA_LIB"
        rm -rf "$KAFKA_LIB.partial"
        "${mvn[@]}" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
            -DoutputDirectory="$KAFKA_LIB.partial" -DincludeScope=runtime 2>&1 | strip_ansi \
            || die "Maven could not resolve the Kafka broker jars (see the output above)"
        [[ -s "$KAFKA_LIB.partial/kafka_2.13-$KAFKA_VERSION.jar" ]] \
            || die "kafka_2.13-$KAFKA_VERSION.jar missing after resolution"
        rm -rf "$KAFKA_LIB" && mv "$KAFKA_LIB.partial" "$KAFKA_LIB"
        printf '%s\n' "$want" >"$kafka_marker"
        say "fetch: $(ls "$KAFKA_LIB"/*.jar | wc -l) jars, $(du -sh "$KAFKA_LIB" | cut -f1)"
    fi
    if (( need_conn )) && ! [[ -f "$conn_marker" && -s "$CONNECTOR_JAR" ]]; then
        say "fetch: $CONNECTOR_ARTIFACT into $(dirname "$CONNECTOR_JAR")"
        "${mvn[@]}" dependency:copy -Dartifact="$CONNECTOR_ARTIFACT" \
            -DoutputDirectory="$(dirname "$CONNECTOR_JAR")" -Dmdep.overWriteReleases=true 2>&1 | strip_ansi \
            || die "Maven could not fetch $CONNECTOR_ARTIFACT"
        [[ -s "$CONNECTOR_JAR" ]] || die "$CONNECTOR_JAR missing after dependency:copy"
        : >"$conn_marker"
    fi
    exec 8>&-
    say "fetch: done"
}

# ---------------------------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------------------------
render_kafka_conf() {
    mkdir -p "$KAFKA_DATA" "$KAFKA_DIR/tmp" "$LOGS"
    render "$DEPLOY/kafka/server.properties.tmpl" "$KAFKA_DIR/server.properties" \
        KAFKA_PORT="$KAFKA_PORT" CONTROLLER_PORT="$CONTROLLER_PORT" DATA_DIR="$KAFKA_DATA"
    render "$DEPLOY/kafka/log4j2.yaml.tmpl" "$KAFKA_DIR/log4j2.yaml" LOG_DIR="$LOGS"
}

kafka_java() {  # the JVM command line shared by StorageTool and the broker
    printf '%s\0' java -Djava.awt.headless=true -Djava.io.tmpdir="$KAFKA_DIR/tmp" \
        -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.yaml" \
        -cp "$KAFKA_LIB/*"
}

start_kafka() {
    local pid
    pid="$(kafka_pid)"
    if [[ -n "$pid" ]]; then
        say "kafka: already running (pid $pid)"
        return 0
    fi
    if port_open "$KAFKA_PORT" || port_open "$CONTROLLER_PORT"; then
        die "port $KAFKA_PORT or $CONTROLLER_PORT is in use by a process that is not this checkout's Kafka ($(ss -ltnp 2>/dev/null | grep -E ":($KAFKA_PORT|$CONTROLLER_PORT) " | tr -s ' ' | head -n 2))"
    fi
    render_kafka_conf
    local -a jcmd
    mapfile -d '' jcmd < <(kafka_java)
    if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
        local cid
        if [[ -s "$KAFKA_DIR/cluster.id" ]]; then
            cid="$(cat "$KAFKA_DIR/cluster.id")"
        else
            # Same format as `kafka-storage.sh random-uuid` (base64url of 16 random bytes, never
            # starting with '-'), without paying for a JVM start.
            cid="$(python3 -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break')"
            [[ ${#cid} -eq 22 ]] || die "could not generate a cluster id"
            printf '%s\n' "$cid" >"$KAFKA_DIR/cluster.id"
        fi
        say "kafka: formatting $KAFKA_DATA (cluster id $cid)"
        # Static quorum (controller.quorum.voters is set): no --standalone.
        "${jcmd[@]}" kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_DIR/server.properties" \
            >>"$LOGS/kafka.out" 2>&1 || { tail_log "$LOGS/kafka.out"; die "kafka storage format failed"; }
    fi
    say "kafka: starting broker on $BOOTSTRAP (log $LOGS/kafka.log)"
    printf '\n===== %s starting kafka =====\n' "$(date -Is)" >>"$LOGS/kafka.out"
    # setsid: the broker leaves the caller's process group/session (a Ctrl-C or a killed test run
    # must not take it down half-way); fd 9 (our lock) is not inherited.
    (cd "$KAFKA_DIR" && exec setsid "${jcmd[@]}" $KAFKA_HEAP -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
        kafka.Kafka "$KAFKA_DIR/server.properties") >>"$LOGS/kafka.out" 2>&1 </dev/null 9>&- &
    pid=$!
    sleep 0.3
    if ! ours "$pid"; then   # setsid forked (caller was a group leader): find the JVM by its config path
        pid="$(pgrep -f -- "kafka.Kafka $KAFKA_DIR/server.properties" | head -n 1 || true)"
    fi
    [[ -n "$pid" ]] && ours "$pid" || { tail_log "$LOGS/kafka.out"; tail_log "$LOGS/kafka.log"; die "kafka exited right after start"; }
    printf '%s\n' "$pid" >"$KAFKA_PID_FILE"
}

wait_kafka() {
    local t0=$SECONDS pid
    pid="$(cat "$KAFKA_PID_FILE" 2>/dev/null || true)"
    until port_open "$KAFKA_PORT"; do
        if ! ours "$pid"; then
            tail_log "$LOGS/kafka.out"; tail_log "$LOGS/kafka.log" 60
            die "kafka (pid $pid) died during startup"
        fi
        if (( SECONDS - t0 >= WAIT_S )); then
            tail_log "$LOGS/kafka.log" 60
            die "kafka did not open $BOOTSTRAP within ${WAIT_S}s"
        fi
        sleep 0.5
    done
    local left=$(( WAIT_S - (SECONDS - t0) )); (( left < 5 )) && left=5
    if ! "$PY" "$DEPLOY/topics.py" --bootstrap "$BOOTSTRAP" --check --wait "$left" >/dev/null; then
        tail_log "$LOGS/kafka.log" 60
        die "kafka listens on $BOOTSTRAP but does not answer metadata requests"
    fi
    say "kafka: ready on $BOOTSTRAP ($(( SECONDS - t0 ))s)"
}

cmd_topics() {
    need_venv
    local -a lat=()
    local t
    for t in "${LOG_APPEND_TIME_TOPICS[@]}"; do lat+=(--log-append-time "$t"); done
    "$PY" "$DEPLOY/topics.py" --bootstrap "$BOOTSTRAP" --partitions "$PARTITIONS" --wait 30 \
        "${lat[@]}" "${DEFAULT_TOPICS[@]}" "$@" || die "topic creation failed"
}

stop_kafka() {
    local pid
    pid="$(kafka_pid)"
    if [[ -z "$pid" ]]; then
        say "kafka: not running"
        rm -f "$KAFKA_PID_FILE"
        return 0
    fi
    say "kafka: stopping (pid $pid, SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    local t0=$SECONDS
    while ours "$pid"; do
        if (( SECONDS - t0 >= 30 )); then
            warn "kafka did not exit within 30s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
    ! ours "$pid" || die "kafka pid $pid is still alive"
    wait_reaped "$pid"
    rm -f "$KAFKA_PID_FILE"
    say "kafka: stopped ($(( SECONDS - t0 ))s)"
}

# ---------------------------------------------------------------------------------------------
# Flink
# ---------------------------------------------------------------------------------------------
# Cluster classpath (FLINK_LIB_DIR): symlinks to the distribution's lib/ plus flink-python from opt/,
# so that pemja (PyFlink THREAD mode) is loaded once per JVM by the parent classloader.
make_flink_lib() {
    resolve_python_paths
    mkdir -p "$FLINK_LIB"
    find "$FLINK_LIB" -maxdepth 1 -type l -name '*.jar' -delete
    local jar
    for jar in "$FLINK_HOME_RESOLVED"/lib/*.jar "$FLINK_HOME_RESOLVED"/opt/flink-python-*.jar; do
        [[ -f "$jar" ]] || die "missing $jar in the PyFlink distribution"
        ln -s "$jar" "$FLINK_LIB/"
    done
}

render_flink_conf() {
    resolve_python_paths
    mkdir -p "$FLINK_CONF" "$FLINK_PIDS" "$FLINK_RUN"/{checkpoints,savepoints,tmp,web-upload} "$LOGS"
    local before=""
    [[ -f "$FLINK_CONF/config.yaml" ]] && before="$(sha256sum "$FLINK_CONF/config.yaml" | cut -d' ' -f1)"
    render "$DEPLOY/flink/config.yaml.tmpl" "$FLINK_CONF/config.yaml" \
        RUN_DIR="$RUN" LOG_DIR="$LOGS" VENV_PYTHON="$PY" \
        FLINK_REST_PORT="$REST_PORT" FLINK_RPC_PORT="$RPC_PORT"
    # Logging configs come from the distribution unchanged; they log to ${log.file} in FLINK_LOG_DIR.
    cp -f "$FLINK_HOME_RESOLVED"/conf/log4j*.properties "$FLINK_HOME_RESOLVED"/conf/logback*.xml "$FLINK_CONF/"
    make_flink_lib
    printf 'localhost:%s\n' "$REST_PORT" >"$FLINK_CONF/masters"
    printf 'localhost\n' >"$FLINK_CONF/workers"
    local after
    after="$(sha256sum "$FLINK_CONF/config.yaml" | cut -d' ' -f1)"
    if [[ -n "$before" && "$before" != "$after" && -n "$(jm_pids)$(tm_pids)" ]]; then
        warn "flink config changed while the cluster is running; run 'deploy/stack.sh down && deploy/stack.sh up' to apply it"
    fi
}

rest_overview() {  # prints "taskmanagers slots-total slots-available jobs-running" or fails
    local body
    body="$(curl -sf --max-time 3 "$REST_URL/overview" 2>/dev/null)" || return 1
    python3 -c '
import json, sys
o = json.load(sys.stdin)
print(o.get("taskmanagers", 0), o.get("slots-total", 0), o.get("slots-available", 0), o.get("jobs-running", 0))
' <<<"$body" 2>/dev/null
}

start_flink() {
    export_flink_env
    render_flink_conf
    local jm tm
    jm="$(jm_pids | head -n 1)"; tm="$(tm_pids | head -n 1)"
    if [[ -n "$jm" && -n "$tm" ]]; then
        say "flink: already running (jobmanager pid $jm, taskmanager pid $tm)"
        return 0
    fi
    if [[ -z "$jm" ]] && { port_open "$REST_PORT" || port_open "$RPC_PORT"; }; then
        die "port $REST_PORT or $RPC_PORT is in use by a process that is not this checkout's Flink ($(ss -ltnp 2>/dev/null | grep -E ":($REST_PORT|$RPC_PORT) " | tr -s ' ' | head -n 2))"
    fi
    # Drop stale pid files so Flink's daemon scripts number the log files from 0 again.
    [[ -z "$jm" ]] && rm -f "$JM_PID_FILE"
    [[ -z "$tm" ]] && rm -f "$TM_PID_FILE"
    cd "$FLINK_RUN"
    # A freshly started TaskManager counts only once the JobManager lists a TaskManager id it did not
    # list before (after a TM crash the REST API still shows the dead one until the heartbeat timeout).
    if [[ -z "$tm" ]]; then
        TM_STARTED=1
        TM_IDS_BEFORE="$(rest_tm_ids || true)"
    fi
    if [[ -z "$jm" && -z "$tm" ]]; then
        say "flink: starting cluster (FLINK_HOME=$FLINK_HOME)"
        setsid -w "$FLINK_HOME/bin/start-cluster.sh" 9>&- </dev/null | sed 's/^/[flink] /'
    elif [[ -z "$jm" ]]; then
        say "flink: taskmanager running without jobmanager; starting the jobmanager"
        setsid -w "$FLINK_HOME/bin/jobmanager.sh" start 9>&- </dev/null | sed 's/^/[flink] /'
    else
        say "flink: jobmanager running without taskmanager; starting a taskmanager"
        setsid -w "$FLINK_HOME/bin/taskmanager.sh" start 9>&- </dev/null | sed 's/^/[flink] /'
    fi
    cd - >/dev/null
}

rest_tm_ids() {  # one registered TaskManager id per line
    local body
    body="$(curl -sf --max-time 3 "$REST_URL/taskmanagers" 2>/dev/null)" || return 1
    python3 -c '
import json, sys
for t in json.load(sys.stdin).get("taskmanagers", []):
    print(t["id"])
' <<<"$body" 2>/dev/null
}

TM_STARTED=0
TM_IDS_BEFORE=""
tm_registered() {
    (( TM_STARTED )) || return 0
    local now id
    now="$(rest_tm_ids)" || return 1
    while IFS= read -r id; do
        [[ -n "$id" ]] && ! grep -qxF -- "$id" <<<"$TM_IDS_BEFORE" && return 0
    done <<<"$now"
    return 1
}

wait_flink() {
    local t0=$SECONDS ov=""
    while :; do
        if ov="$(rest_overview)"; then
            read -r tms total free running <<<"$ov"
            # Ready: a TaskManager registered and at least one free slot (all of them on a fresh start).
            if (( tms >= 1 && (free >= 1 || running >= 1) )) && tm_registered; then
                say "flink: ready at $REST_URL (taskmanagers=$tms slots=$free/$total free, jobs running=$running; $(( SECONDS - t0 ))s)"
                return 0
            fi
        fi
        if [[ -z "$(jm_pids)" ]]; then
            tail_log "$(latest "$LOGS/flink-$IDENT-standalonesession-*.log")" 60
            tail_log "$(latest "$LOGS/flink-$IDENT-standalonesession-*.out")" 20
            die "flink jobmanager is not running"
        fi
        if [[ -z "$(tm_pids)" ]]; then
            tail_log "$(latest "$LOGS/flink-$IDENT-taskexecutor-*.log")" 60
            tail_log "$(latest "$LOGS/flink-$IDENT-taskexecutor-*.out")" 20
            die "flink taskmanager is not running"
        fi
        if (( SECONDS - t0 >= WAIT_S )); then
            tail_log "$(latest "$LOGS/flink-$IDENT-standalonesession-*.log")" 40
            tail_log "$(latest "$LOGS/flink-$IDENT-taskexecutor-*.log")" 40
            die "flink not ready within ${WAIT_S}s (last overview: ${ov:-no answer from $REST_URL/overview})"
        fi
        sleep 1
    done
}

stop_flink() {
    local pids
    pids="$( { jm_pids; tm_pids; } | sort -u | tr '\n' ' ')"
    if [[ -z "${pids// /}" ]]; then
        say "flink: not running"
    else
        say "flink: stopping cluster (pids $pids)"
        if [[ -x "$PY" && -f "$FLINK_CONF/config.yaml" ]] && (resolve_python_paths) 2>/dev/null; then
            ( export_flink_env; [[ -d "$FLINK_LIB" ]] || make_flink_lib; cd "$FLINK_RUN"; "$FLINK_HOME/bin/stop-cluster.sh" 9>&- </dev/null 2>&1 | sed 's/^/[flink] /' ) || true
        fi
        local t0=$SECONDS p alive
        while :; do
            alive=""
            for p in $pids; do ours "$p" && alive+="$p "; done
            [[ -z "$alive" ]] && break
            if (( SECONDS - t0 >= 20 )); then
                warn "flink pids still alive after 20s: $alive; SIGKILL"
                kill -KILL $alive 2>/dev/null || true
                sleep 1
                break
            fi
            # stop-cluster.sh stops only the last pid of each file; SIGTERM any others.
            kill -TERM $alive 2>/dev/null || true
            sleep 1
        done
        wait_reaped $pids
        say "flink: stopped ($(( SECONDS - t0 ))s)"
    fi
    rm -f "$JM_PID_FILE" "$TM_PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# Drills: crash a TaskManager, bounce the broker
# ---------------------------------------------------------------------------------------------
kill_taskmanagers() {  # SIGKILL every live TaskManager of this checkout (pid file + strays); prints the pids
    local p pids=""
    for p in $(tm_pids) $(stray_java_pids); do
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null \
            | grep -qF ' org.apache.flink.runtime.taskexecutor.TaskManagerRunner ' && pids+="$p "
    done
    pids="$(tr ' ' '\n' <<<"$pids" | sort -u | tr '\n' ' ')"
    if [[ -z "${pids// /}" ]]; then
        say "flink: no taskmanager of this checkout is running"
        return 0
    fi
    say "flink: SIGKILL taskmanager pid(s) $pids"
    kill -KILL $pids 2>/dev/null || true
    local t0=$SECONDS
    for p in $pids; do
        while ours "$p"; do
            (( SECONDS - t0 >= 10 )) && die "taskmanager pid $p survived SIGKILL for 10s"
            sleep 0.1
        done
    done
    wait_reaped $pids
}

cmd_kill_taskmanager() {
    lock
    kill_taskmanagers
}

cmd_restart_taskmanager() {
    check_paths
    need_venv
    lock
    [[ -n "$(jm_pids)" ]] || die "no jobmanager of this checkout is running (deploy/stack.sh up)"
    kill_taskmanagers
    local t0=$SECONDS
    start_flink
    wait_flink
    say "flink: taskmanager pid $(tm_pids | tail -n 1) registered ($(( SECONDS - t0 ))s)"
}

cmd_stop_kafka() {
    lock
    stop_kafka
}

cmd_start_kafka() {
    check_paths
    need_venv
    need_cmd java "Java 17 is needed"
    lock
    local t0=$SECONDS
    start_kafka
    wait_kafka
    say "kafka: up again ($(( SECONDS - t0 ))s)"
}

cmd_restart_kafka() {
    local down_s="${1:-0}"
    [[ "$down_s" =~ ^[0-9]+$ ]] || die "restart-kafka: DOWN_S must be whole seconds, got '$down_s'"
    check_paths
    need_venv
    lock
    [[ -f "$KAFKA_DATA/meta.properties" ]] || die "kafka was never started here (no $KAFKA_DATA)"
    stop_kafka
    (( down_s > 0 )) && { say "kafka: staying down ${down_s}s"; sleep "$down_s"; }
    local t0=$SECONDS
    start_kafka
    wait_kafka
    say "kafka: up again ($(( SECONDS - t0 ))s)"
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
cmd_up() {
    check_paths
    need_venv
    need_cmd java "Java 17 is needed"
    need_cmd curl "used to poll the Flink REST API"
    cmd_fetch
    lock
    local t0=$SECONDS
    start_kafka
    wait_kafka
    cmd_topics
    start_flink
    wait_flink
    say "up in $(( SECONDS - t0 ))s"
    cat <<EOF
  kafka bootstrap : $BOOTSTRAP
  flink web UI    : $REST_URL
  logs            : $LOGS
  job env         : eval "\$(bash deploy/stack.sh env)"
EOF
}

cmd_down() {
    lock
    stop_flink
    stop_kafka
    # Anything of ours still alive (e.g. a second TaskManager started by hand) goes too.
    local stray
    stray="$(stray_java_pids | tr '\n' ' ')"
    if [[ -n "${stray// /}" ]]; then
        warn "stray java processes of this stack: $stray; SIGTERM, then SIGKILL"
        kill -TERM $stray 2>/dev/null || true
        sleep 5
        stray="$(stray_java_pids | tr '\n' ' ')"
        [[ -n "${stray// /}" ]] && { kill -KILL $stray 2>/dev/null || true; sleep 1; }
    fi
    stray="$(stray_java_pids | tr '\n' ' ')"
    [[ -z "${stray// /}" ]] || die "processes still alive: $stray"
    say "down: no process of this stack is running"
}

cmd_clean() {
    cmd_down
    [[ "$RUN" == "$R/.run" && -d "$RUN" ]] && rm -rf -- "$RUN"
    say "clean: removed $RUN (download cache kept: $CACHE)"
}

cmd_status() {
    local rc=0 pid ov
    pid="$(kafka_pid)"
    if [[ -n "$pid" ]] && port_open "$KAFKA_PORT"; then
        local cid=""
        [[ -s "$KAFKA_DIR/cluster.id" ]] && cid=" cluster=$(cat "$KAFKA_DIR/cluster.id")"
        if [[ -x "$PY" ]] && "$PY" "$DEPLOY/topics.py" --bootstrap "$BOOTSTRAP" --check --wait 5 >/dev/null 2>&1; then
            printf '%-11s up    pid %-8s %s%s\n' kafka "$pid" "$BOOTSTRAP" "$cid"
        else
            printf '%-11s DOWN  pid %-8s %s (listening, but no metadata answer)\n' kafka "$pid" "$BOOTSTRAP"; rc=1
        fi
    elif [[ -n "$pid" ]]; then
        printf '%-11s DOWN  pid %-8s not listening on %s\n' kafka "$pid" "$BOOTSTRAP"; rc=1
    else
        printf '%-11s DOWN\n' kafka; rc=1
    fi
    pid="$(jm_pids | tr '\n' ' ')"
    if [[ -n "${pid// /}" ]]; then printf '%-11s up    pid %s\n' flink-jm "$pid"; else printf '%-11s DOWN\n' flink-jm; rc=1; fi
    pid="$(tm_pids | tr '\n' ' ')"
    if [[ -n "${pid// /}" ]]; then printf '%-11s up    pid %s\n' flink-tm "$pid"; else printf '%-11s DOWN\n' flink-tm; rc=1; fi
    if ov="$(rest_overview)"; then
        read -r tms total free running <<<"$ov"
        printf '%-11s up    %s taskmanagers=%s slots=%s/%s free jobs-running=%s\n' flink-rest "$REST_URL" "$tms" "$free" "$total" "$running"
        (( tms >= 1 )) || rc=1
    else
        printf '%-11s DOWN  %s/overview does not answer\n' flink-rest "$REST_URL"; rc=1
    fi
    return $rc
}

cmd_env() {
    resolve_python_paths
    q() { printf "export %s=%q\n" "$1" "$2"; }
    q FLINK_HOME "$FLINK_HOME_RESOLVED"
    q FLINK_CONF_DIR "$FLINK_CONF"
    q FLINK_LIB_DIR "$FLINK_LIB"
    q FLINK_LOG_DIR "$LOGS"
    q FLINK_PID_DIR "$FLINK_PIDS"
    q FLINK_IDENT_STRING "$IDENT"
    q INTENTFLOW_ROOT "$R"
    q INTENTFLOW_RUN_DIR "$RUN"
    q INTENTFLOW_LOG_DIR "$LOGS"
    q INTENTFLOW_PYTHON "$PY"
    q INTENTFLOW_BOOTSTRAP "$BOOTSTRAP"
    q INTENTFLOW_REST_URL "$REST_URL"
    q INTENTFLOW_CONNECTOR_JAR "$CONNECTOR_JAR"
    q INTENTFLOW_CHECKPOINT_DIR "file://$FLINK_RUN/checkpoints"
    q INTENTFLOW_SAVEPOINT_DIR "file://$FLINK_RUN/savepoints"
    # PyFlink THREAD mode: the embedded interpreter (pemja) needs the venv's site-packages + the repo.
    q INTENTFLOW_PYTHONPATH "$THREAD_PYTHONPATH"
    q PYTHONPATH "$THREAD_PYTHONPATH"
}

cmd_logs() {
    local n="${1:-40}" f
    say "log folder: $LOGS"
    [[ -d "$LOGS" ]] || { say "(no logs yet)"; return 0; }
    ls -la "$LOGS"
    for f in "$LOGS/kafka.log" \
             "$(latest "$LOGS/flink-$IDENT-standalonesession-*.log")" \
             "$(latest "$LOGS/flink-$IDENT-taskexecutor-*.log")" \
             "$(latest "$LOGS/flink-$IDENT-taskexecutor-*.out")"; do
        [[ -n "$f" && -f "$f" ]] || continue
        printf '\n===== %s (last %s lines) =====\n' "$f" "$n"
        tail -n "$n" "$f"
    done
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

main() {
    local cmd="${1:-help}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        setup)  cmd_setup "$@" ;;
        fetch)  cmd_fetch "$@" ;;
        up)     cmd_up "$@" ;;
        topics) cmd_topics "$@" ;;
        status) cmd_status "$@" ;;
        down)   cmd_down "$@" ;;
        clean)  cmd_clean "$@" ;;
        env)    cmd_env "$@" ;;
        logs)   cmd_logs "$@" ;;
        kill-taskmanager)    cmd_kill_taskmanager "$@" ;;
        restart-taskmanager) cmd_restart_taskmanager "$@" ;;
        stop-kafka)          cmd_stop_kafka "$@" ;;
        start-kafka)         cmd_start_kafka "$@" ;;
        restart-kafka)       cmd_restart_kafka "$@" ;;
        help|-h|--help) usage ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
