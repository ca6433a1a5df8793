#!/usr/bin/env bash
# A real Apache Kafka broker for peergraph development and integration tests:
# one KRaft node (combined broker + controller) on loopback, installed from
# Maven Central with the project's pom.xml and run straight from the jars.
#
#   deploy/kafka/kafka.sh install     fetch the broker jars into the cache (idempotent)
#   deploy/kafka/kafka.sh start       format a fresh store, start, wait until ready;
#                                     prints PEERGRAPH_KAFKA_BROKERS=host:port on stdout
#   deploy/kafka/kafka.sh stop        stop the broker and delete its data (safe when stopped)
#   deploy/kafka/kafka.sh restart     stop + start
#   deploy/kafka/kafka.sh status      exit 0 when running, 3 when not
#   deploy/kafka/kafka.sh log [N]     last N (default 100) lines of the broker log
#   deploy/kafka/kafka.sh topics ARGS kafka-topics against this broker, e.g. `topics --list`
#   deploy/kafka/kafka.sh run-class CLASS [ARGS]
#                                     run any class on the Kafka classpath (like kafka-run-class.sh)
#
# Environment (all optional):
#   PEERGRAPH_KAFKA_PORT             client listener port (default 19092)
#   PEERGRAPH_KAFKA_CONTROLLER_PORT  KRaft controller port (default: client port + 1)
#   PEERGRAPH_KAFKA_CACHE            jar cache + run state (default deploy/kafka/.cache)
#   PEERGRAPH_KAFKA_RUN_DIR          run state: config, pid, logs, data (default $CACHE/run-$PORT)
#   PEERGRAPH_KAFKA_HEAP             broker max heap (default 768m)
#   PEERGRAPH_KAFKA_START_TIMEOUT    seconds to wait for the broker (default 90)
#   JAVA_HOME                        Java 17+ to use (default: java on PATH)
#
# Progress goes to stderr; stdout only carries the PEERGRAPH_KAFKA_BROKERS line of `start`.
# See docs/kafka.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
POM="$SCRIPT_DIR/pom.xml"
BROKER_LOG4J="$SCRIPT_DIR/log4j2.properties"
TOOLS_LOG4J="$SCRIPT_DIR/tools-log4j2.properties"

HOST=127.0.0.1
PORT="${PEERGRAPH_KAFKA_PORT:-19092}"
[[ "$PORT" =~ ^[0-9]{1,5}$ ]] || { echo "kafka.sh: error: PEERGRAPH_KAFKA_PORT must be a TCP port number, got '$PORT'" >&2; exit 1; }
CONTROLLER_PORT="${PEERGRAPH_KAFKA_CONTROLLER_PORT:-$((10#$PORT + 1))}"
HEAP="${PEERGRAPH_KAFKA_HEAP:-768m}"
START_TIMEOUT="${PEERGRAPH_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT=30
BROKERS="$HOST:$PORT"

absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
CACHE="$(absolute "${PEERGRAPH_KAFKA_CACHE:-$SCRIPT_DIR/.cache}")"
LIBS="$CACHE/libs"
STAMP="$LIBS/.installed"
RUN_DIR="$(absolute "${PEERGRAPH_KAFKA_RUN_DIR:-$CACHE/run-$PORT}")"
DATA_DIR="$RUN_DIR/data"
LOG_DIR="$RUN_DIR/logs"
CONFIG="$RUN_DIR/server.properties"
PID_FILE="$RUN_DIR/kafka.pid"
SERVER_LOG="$LOG_DIR/server.log"
CONSOLE_LOG="$LOG_DIR/console.log"
# Put on the broker's command line so `stop` only ever signals the broker it started.
MARKER="-Dpeergraph.kafka.run=$RUN_DIR"

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

check_port_number() {
  local name="$1" value="$2"
  # shellcheck disable=SC2015 # die when either test fails
  [[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value > 0 && 10#$value < 65536)) \
    || die "$name must be a TCP port number, got '$value'"
}
check_port_number PEERGRAPH_KAFKA_PORT "$PORT"
check_port_number PEERGRAPH_KAFKA_CONTROLLER_PORT "$CONTROLLER_PORT"
[[ "$PORT" != "$CONTROLLER_PORT" ]] || die "client and controller ports must differ (both $PORT)"
[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "PEERGRAPH_KAFKA_START_TIMEOUT must be whole seconds, got '$START_TIMEOUT'"

require_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install a Java 17+ JDK or set JAVA_HOME)"
  local spec
  spec="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  # shellcheck disable=SC2015 # die when either test fails
  [[ "$spec" =~ ^[0-9]+$ ]] && ((spec >= 17)) \
    || die "Kafka 4 needs Java 17 or newer; '$JAVA' is Java ${spec:-of unknown version}"
}

# Serialise commands that change state (concurrent installs into one cache, start racing stop).
# The lock fd is closed for the broker process so a running broker never holds it.
lock() {
  local file="$1"
  mkdir -p "$(dirname "$file")"
  exec 9>"$file"
  if command -v flock >/dev/null 2>&1; then
    flock -w 300 9 || die "timed out waiting for lock $file"
  fi
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

installed() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_hash)" ]]; }

cmd_install() {
  if installed; then
    say "already installed in $LIBS"
    return 0
  fi
  lock "$CACHE/.install.lock"
  if installed; then # another process finished the install while we waited
    say "already installed in $LIBS"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Apache Maven) not found; install it (e.g. apt-get install maven)"
  require_java
  say "installing Kafka jars from Maven Central into $LIBS ..."
  local tmp
  tmp="$(mktemp -d "$CACHE/libs.tmp.XXXXXX")"
  # (Maven 3.8 prints stray colour codes even in batch mode; strip them.)
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime 2>&1 \
      | sed -u 's/\x1b\[[0-9;]*m//g' >&2; then
    rm -rf "$tmp"
    die "maven could not fetch the Kafka jars (see the output above)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "maven finished but no kafka_2.13 jar was copied"; }
  pom_hash >"$tmp/.installed"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  local version
  version="$(kafka_version)"
  say "installed Kafka $version ($(find "$LIBS" -name '*.jar' | wc -l) jars)"
}

kafka_version() {
  local jar
  jar="$(compgen -G "$LIBS/kafka_2.13-*.jar" | head -n1)"
  jar="${jar##*/kafka_2.13-}"
  printf '%s\n' "${jar%.jar}"
}

# Is PID alive (and not a zombie waiting to be reaped)?
alive() {
  local pid="$1" state
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/stat" ]]; then
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ "$state" != Z ]]
  fi
}

# Is PID the broker started for this run directory?
ours() {
  local pid="$1" args
  alive "$pid" || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    args="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  else
    args="$(ps -o args= -p "$pid" 2>/dev/null | tr ' ' '\n')" || return 1
  fi
  grep -qxF -- "$MARKER" <<<"$args"
}

# Pid of the running broker, or nothing.
running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 0
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && printf '%s\n' "$pid"
  return 0
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

write_config() {
  cat >"$CONFIG" <<EOF
# Generated by deploy/kafka/kafka.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); rewritten on every start.
# Single-node KRaft cluster for peergraph development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$DATA_DIR/kraft-logs

# Topics are created explicitly (peergraph creates its own through the admin API).
auto.create.topics.enable=false
delete.topic.enable=true
num.partitions=4
default.replication.factor=1
min.insync.replicas=1

# Internal topics on a single node.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Small and light: a test machine, not a production box.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
log.segment.bytes=16777216
# No time-based retention: the tests write flows and outputs whose timestamps are event times
# months in the past (a fixed simulated start), which a retention by time would delete part-way
# through a test (Kafka rolls and deletes even the active segment once it is older than that).
log.retention.ms=-1
EOF
}

tail_logs() {
  local f
  for f in "$SERVER_LOG" "$CONSOLE_LOG"; do
    if [[ -s "$f" ]]; then
      printf -- '--- last lines of %s ---\n' "$f" >&2
      tail -n 40 "$f" >&2
    fi
  done
}

# Stop the broker of this run directory (if any) and delete its data. Keeps the logs.
stop_broker() {
  local pid waited=0
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    say "stopping broker (pid $pid) ..."
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" && ((waited < STOP_TIMEOUT * 5)); do
      sleep 0.2
      waited=$((waited + 1))
    done
    if alive "$pid"; then
      say "broker did not stop within ${STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      waited=0
      while alive "$pid" && ((waited < 50)); do
        sleep 0.2
        waited=$((waited + 1))
      done
      alive "$pid" && die "could not kill broker pid $pid"
    fi
    say "stopped"
  else
    say "not running"
  fi
  rm -f "$PID_FILE"
  rm -rf "$DATA_DIR"
}

java_tool() { # CLASS ARGS... : run a Kafka class with the tools logging config
  "$JAVA" -Xmx512m -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$TOOLS_LOG4J" -Dlog4j2.shutdownHookEnabled=false \
    -cp "$LIBS/*" "$@"
}

cmd_start() {
  installed || cmd_install
  require_java
  lock "$RUN_DIR/.lock"

  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    say "already running (pid $pid) on $BROKERS"
    printf 'PEERGRAPH_KAFKA_BROKERS=%s\n' "$BROKERS"
    return 0
  fi
  local p
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $HOST:$p is already in use by another process; stop it or choose other ports with PEERGRAPH_KAFKA_PORT / PEERGRAPH_KAFKA_CONTROLLER_PORT"
    fi
  done

  local started=$SECONDS
  rm -f "$PID_FILE"
  rm -rf "$DATA_DIR" "$LOG_DIR"
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  write_config

  # KRaft needs the log directory formatted with a cluster id before the first start.
  local cluster_id
  cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  # `--cluster-id=…` in one word: an id starting with "-" (one in 64) would otherwise be taken for an option.
  if ! java_tool kafka.tools.StorageTool format "--cluster-id=$cluster_id" --config "$CONFIG" \
      >"$LOG_DIR/format.log" 2>&1; then
    cat "$LOG_DIR/format.log" >&2
    die "formatting the KRaft store in $DATA_DIR failed"
  fi

  say "starting Kafka $(kafka_version) on $BROKERS (controller $HOST:$CONTROLLER_PORT), logs in $LOG_DIR"
  # No exec/setsid: the broker stays in the caller's process group, so Ctrl-C reaches it too.
  nohup "$JAVA" -server "-Xmx$HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$LOG_DIR" \
    "-Dlog4j2.configurationFile=file:$BROKER_LOG4J" \
    -Dlog4j2.shutdownHookEnabled=false \
    "$MARKER" \
    -cp "$LIBS/*" kafka.Kafka "$CONFIG" \
    </dev/null >"$CONSOLE_LOG" 2>&1 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! alive "$pid"; then
      tail_logs
      rm -f "$PID_FILE"
      die "the broker exited during startup (logs in $LOG_DIR)"
    fi
    # "Kafka Server started" is logged once the broker is unfenced and serving.
    if port_open "$PORT" && grep -q 'Kafka Server started' "$SERVER_LOG" 2>/dev/null; then
      break
    fi
    if ((SECONDS >= deadline)); then
      tail_logs
      say "the broker did not become ready within ${START_TIMEOUT}s; stopping it"
      stop_broker
      die "Kafka failed to start (logs in $LOG_DIR)"
    fi
    sleep 0.25
  done
  say "ready after $((SECONDS - started))s (pid $pid)"
  printf 'PEERGRAPH_KAFKA_BROKERS=%s\n' "$BROKERS"
}

cmd_stop() {
  lock "$RUN_DIR/.lock"
  stop_broker
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    if port_open "$PORT"; then
      say "running (pid $pid) on $BROKERS, Kafka $(kafka_version), logs in $LOG_DIR"
    else
      say "process running (pid $pid) but $BROKERS is not accepting connections yet; logs in $LOG_DIR"
    fi
    return 0
  fi
  if installed; then
    say "not running (Kafka $(kafka_version) installed in $LIBS)"
  else
    say "not running (not installed; run: $0 install)"
  fi
  return 3
}

cmd_log() {
  local lines="${1:-100}"
  [[ -f "$SERVER_LOG" ]] || die "no broker log at $SERVER_LOG"
  tail -n "$lines" "$SERVER_LOG"
}

require_installed() { installed || die "Kafka is not installed; run: $0 install"; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    log | logs) cmd_log "$@" ;;
    topics)
      require_installed
      require_java
      java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" "$@"
      ;;
    run-class)
      [[ $# -gt 0 ]] || die "usage: $0 run-class CLASS [ARGS...]"
      require_installed
      require_java
      java_tool "$@"
      ;;
    -h | --help | help) usage ;;
    "") usage; exit 2 ;;
    *) usage; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
