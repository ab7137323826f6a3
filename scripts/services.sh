#!/usr/bin/env bash
# The real servers rampart's scale-out backends are tested against, on loopback, without Docker,
# from package registries only:
#
#   scripts/services.sh up     [mongodb] [opensearch] [kafka] [postgresql]   # default: mongodb opensearch
#   scripts/services.sh down   [...]
#   scripts/services.sh status [...]
#   scripts/services.sh env                                          # the RAMPART_TEST_* exports
#
# - mongodb: FerretDB v1.24.2 (MongoDB wire protocol, Go module proxy) embedded in
#   scripts/ferretdb/main.go, on PostgreSQL (Debian's `postgresql`, a cluster of this script's
#   own). Address RAMPART_MONGODB_ADDR (127.0.0.1:27017).
# - opensearch: OpenSearch 2.19.6 from Maven Central (scripts/opensearch/pom.xml), Java 17,
#   single node, run as an unprivileged uid (it refuses root). Port RAMPART_OPENSEARCH_PORT (9200).
# - kafka: Apache Kafka 4.4.0 from Maven Central jars (scripts/kafka/pom.xml), KRaft combined mode
#   (broker + controller, one node), Java 17. Brokers at RAMPART_KAFKA_ADDR (127.0.0.1:9092), the
#   controller on the next port.
#
# Downloads and builds are cached in RAMPART_SERVICES_CACHE (~/.cache/rampart/services); the
# unpacked OpenSearch, data and logs live in RAMPART_SERVICES_DIR (/var/tmp/rampart-services-<uid>,
# a path the unprivileged service uid can reach, which /root is not): a second `up` takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${RAMPART_SERVICES_CACHE:-$HOME/.cache/rampart/services}
RUN=${RAMPART_SERVICES_DIR:-/var/tmp/rampart-services-$(id -u)}
PG_PORT=${RAMPART_PG_PORT:-54329}
MONGODB_ADDR=${RAMPART_MONGODB_ADDR:-127.0.0.1:27017}
OPENSEARCH_PORT=${RAMPART_OPENSEARCH_PORT:-9200}
KAFKA_ADDR=${RAMPART_KAFKA_ADDR:-127.0.0.1:9092}
KAFKA_VERSION=4.4.0
FERRETDB_VERSION=v1.24.2
OPENSEARCH_VERSION=2.19.6
# The unprivileged uid/gid PostgreSQL and OpenSearch run as (both refuse root).
SERVICE_UID=${RAMPART_SERVICES_UID:-65534}
SERVICE_GID=${RAMPART_SERVICES_GID:-65534}

# Helpers whose output is captured (`bin=$(pg_bin)`, `home=$(opensearch_home)`, ...) print their
# result and nothing else on stdout: every tool they run writes to stderr. (`mvn -q` once wrote an
# ANSI reset to stdout that became part of a path, failing every first install of OpenSearch.)
log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_service() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid="$SERVICE_UID" --regid="$SERVICE_GID" --clear-groups "$@"
    else
        "$@"
    fi
}

own() {
    if [ "$(id -u)" = 0 ]; then chown -R "$SERVICE_UID:$SERVICE_GID" "$@"; fi
}

# Waits until `$2...` succeeds, at most $1 seconds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Stops process $2 (named $1 in the log): TERM, then KILL after $3 seconds.
stop_pid() {
    local name=$1 pid=$2 grace=$3
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        wait_for "$grace" bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
        log "$name stopped"
    fi
}

tcp_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

apt_install() {
    [ "$(id -u)" = 0 ] || die "$* missing, and installing it needs root (apt-get install $*)"
    if [ ! -f "$CACHE/.apt-updated" ]; then
        apt-get update -qq >&2 && mkdir -p "$CACHE" && touch "$CACHE/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (FerretDB's storage)

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$bin" ]; then
        log "installing PostgreSQL from Debian"
        apt_install postgresql
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    echo "$bin"
}

postgresql_up() {
    local bin data="$RUN/postgresql"
    bin=$(pg_bin)
    mkdir -p "$RUN/pgsock"
    if [ ! -f "$data/PG_VERSION" ]; then
        log "creating a PostgreSQL cluster in $data"
        mkdir -p "$data"
        own "$data" "$RUN/pgsock"
        as_service "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    own "$RUN/pgsock"
    if as_service "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "postgresql already running on 127.0.0.1:$PG_PORT"
    else
        as_service "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-h 127.0.0.1 -p $PG_PORT -k $RUN/pgsock -c shared_buffers=128MB -c max_connections=200" \
            start >/dev/null || { tail -20 "$data/server.log" >&2; die "postgresql did not start"; }
        log "postgresql up on 127.0.0.1:$PG_PORT"
    fi
    if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" | grep -q 1; then
        "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE ferretdb" >/dev/null
    fi
}

postgresql_down() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$bin" ] && [ -f "$RUN/postgresql/PG_VERSION" ] || return 0
    as_service "$bin/pg_ctl" -D "$RUN/postgresql" -m fast -w stop >/dev/null 2>&1 && log "postgresql stopped" || true
}

postgresql_status() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -n "$bin" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
        echo "postgresql: up (127.0.0.1:$PG_PORT)"
    else
        echo "postgresql: down"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# FerretDB (MongoDB wire protocol)

ferretdb_bin() {
    # Keyed by the wrapper's source too: a changed main.go builds a new binary.
    local source bin
    source=$(cat "$ROOT/scripts/ferretdb/main.go" "$ROOT/scripts/ferretdb/go.sum" | sha256sum | cut -c1-12)
    bin="$CACHE/bin/ferretdb-$FERRETDB_VERSION-$source"
    if [ ! -x "$bin" ]; then
        command -v go >/dev/null || die "Go is needed to build FerretDB"
        log "building FerretDB $FERRETDB_VERSION (first time: a few minutes)"
        mkdir -p "$CACHE/bin"
        (cd "$ROOT/scripts/ferretdb" && go build -o "$bin.tmp" . && mv "$bin.tmp" "$bin") >&2
    fi
    echo "$bin"
}

mongodb_up() {
    postgresql_up
    local bin pid_file="$RUN/ferretdb.pid"
    bin=$(ferretdb_bin)
    if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        log "mongodb (FerretDB) already running on $MONGODB_ADDR"
        return
    fi
    tcp_open "$MONGODB_ADDR" && die "$MONGODB_ADDR is taken by another process"
    setsid "$bin" -listen "$MONGODB_ADDR" -postgresql "postgres://postgres@127.0.0.1:$PG_PORT/ferretdb" \
        </dev/null >"$RUN/ferretdb.log" 2>&1 &
    echo $! >"$pid_file"
    wait_for 30 tcp_open "$MONGODB_ADDR" || { tail -20 "$RUN/ferretdb.log" >&2; die "FerretDB did not start"; }
    log "mongodb (FerretDB $FERRETDB_VERSION on PostgreSQL) up on $MONGODB_ADDR"
}

mongodb_down() {
    stop_pid "mongodb (FerretDB)" "$(cat "$RUN/ferretdb.pid" 2>/dev/null || true)" 15
    rm -f "$RUN/ferretdb.pid"
}

mongodb_status() {
    if tcp_open "$MONGODB_ADDR"; then
        echo "mongodb: up ($MONGODB_ADDR, FerretDB $FERRETDB_VERSION)"
    else
        echo "mongodb: down"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# OpenSearch

opensearch_home() {
    local home="$RUN/dist/opensearch-$OPENSEARCH_VERSION"
    if [ ! -f "$home/.rampart-installed-2" ]; then
        local download="$CACHE/opensearch-$OPENSEARCH_VERSION-dl"
        if [ ! -f "$download/opensearch-$OPENSEARCH_VERSION.zip" ]; then
            log "fetching OpenSearch $OPENSEARCH_VERSION from Maven Central"
            command -v mvn >/dev/null || die "Maven is needed to fetch OpenSearch"
            mvn -B -q -f "$ROOT/scripts/opensearch/pom.xml" dependency:copy -Dout="$download" >&2
        fi
        command -v unzip >/dev/null || apt_install unzip
        rm -rf "$home" "$home.tmp"
        mkdir -p "$home.tmp"
        unzip -q "$download/opensearch-$OPENSEARCH_VERSION.zip" -d "$home.tmp" >&2
        mv "$home.tmp/opensearch-$OPENSEARCH_VERSION" "$home"
        rmdir "$home.tmp"
        # The integ-test distribution has only transport-netty4: add the analysis modules.
        local painless="$home/modules/lang-painless" common="$home/modules/analysis-common"
        mkdir -p "$painless" "$common"
        cp "$download"/lang-painless-*.jar "$download"/opensearch-scripting-painless-spi-*.jar \
            "$download"/antlr4-runtime-*.jar "$download"/asm-*.jar "$painless/"
        cp "$download"/analysis-common-*.jar "$common/"
        descriptor "$painless" lang-painless org.opensearch.painless.PainlessPlugin "" >"$painless/plugin-descriptor.properties"
        descriptor "$common" analysis-common org.opensearch.analysis.common.CommonAnalysisPlugin lang-painless \
            >"$common/plugin-descriptor.properties"
        # As in the full distribution: Painless (and analysis-common's Painless extension, which
        # loads its allow-lists) generates classes at run time.
        printf '%s\n' 'grant {' \
            '  permission java.lang.RuntimePermission "createClassLoader";' \
            '  permission java.lang.RuntimePermission "getClassLoader";' \
            '};' >"$painless/plugin-security.policy"
        touch "$home/.rampart-installed-2"
    fi
    echo "$home"
}

descriptor() {
    cat <<EOF
description=$2 (added by rampart's scripts/services.sh)
version=$OPENSEARCH_VERSION
name=$2
classname=$3
java.version=11
opensearch.version=$OPENSEARCH_VERSION
extended.plugins=$4
has.native.controller=false
EOF
}

opensearch_url() { echo "http://127.0.0.1:$OPENSEARCH_PORT"; }

opensearch_up() {
    local home dir="$RUN/opensearch"
    home=$(opensearch_home)
    if curl -sf "$(opensearch_url)" >/dev/null 2>&1; then
        log "opensearch already running on $(opensearch_url)"
        return
    fi
    command -v setpriv >/dev/null || apt_install util-linux
    mkdir -p "$dir/data" "$dir/logs" "$dir/tmp"
    rm -f "$dir/opensearch.pid" "$dir/logs/rampart-test.log"
    rm -rf "$dir/config"
    cp -r "$home/config" "$dir/config"
    # jvm.options writes GC logs, heap dumps and error files relative to the installation, which
    # the service uid cannot write: point them at the run directory.
    sed -i -e "s#file=logs/#file=$dir/logs/#" -e "s#HeapDumpPath=data#HeapDumpPath=$dir/data#" \
        -e "s#ErrorFile=logs/#ErrorFile=$dir/logs/#" "$dir/config/jvm.options"
    cat >"$dir/config/opensearch.yml" <<EOF
cluster.name: rampart-test
node.name: rampart-test-node
path.data: $dir/data
path.logs: $dir/logs
network.host: 127.0.0.1
http.port: $OPENSEARCH_PORT
transport.port: $((OPENSEARCH_PORT + 100))
discovery.type: single-node
action.destructive_requires_name: false
cluster.routing.allocation.disk.threshold_enabled: false
EOF
    own "$dir"
    chmod -R a+rX "$home"
    local java_home
    java_home=${OPENSEARCH_JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}
    (cd "$dir" && as_service env OPENSEARCH_JAVA_HOME="$java_home" OPENSEARCH_PATH_CONF="$dir/config" \
        OPENSEARCH_TMPDIR="$dir/tmp" OPENSEARCH_JAVA_OPTS="-Xms384m -Xmx384m" \
        "$home/bin/opensearch" -d -p "$dir/opensearch.pid" >"$dir/logs/console.log" 2>&1) \
        || { tail -30 "$dir/logs/console.log" >&2 || true; die "opensearch did not start"; }
    local deadline=$((SECONDS + 120))
    until curl -sf "$(opensearch_url)/_cluster/health?wait_for_status=green&timeout=2s" >/dev/null 2>&1; do
        # The pid file appears once the node has bootstrapped; a node that died is not waited for.
        if [ "$SECONDS" -ge "$deadline" ] || { [ -f "$dir/opensearch.pid" ] && ! kill -0 "$(cat "$dir/opensearch.pid")" 2>/dev/null; }; then
            grep -v '^\s*at ' "$dir/logs/rampart-test.log" 2>/dev/null | tail -20 >&2 || true
            die "opensearch did not become green within 120 s (log: $dir/logs/rampart-test.log)"
        fi
        sleep 0.5
    done
    log "opensearch $OPENSEARCH_VERSION up on $(opensearch_url)"
}

opensearch_down() {
    local pid_file="$RUN/opensearch/opensearch.pid" pid
    # By its pid file, or (a node that never wrote one) by its configuration path.
    pid=$(cat "$pid_file" 2>/dev/null || pgrep -f "opensearch.path.conf=$RUN/opensearch/config" | head -1 || true)
    stop_pid opensearch "$pid" 30
    rm -f "$pid_file"
}

opensearch_status() {
    local health
    if health=$(curl -sf "$(opensearch_url)/_cluster/health" 2>/dev/null); then
        echo "opensearch: up ($(opensearch_url), $(echo "$health" | grep -o '"status":"[a-z]*"'))"
    else
        echo "opensearch: down"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# Kafka

kafka_libs() {
    local libs="$CACHE/kafka-$KAFKA_VERSION/libs"
    if [ ! -f "$libs/.complete" ]; then
        command -v mvn >/dev/null || die "Maven is needed to fetch Kafka"
        log "fetching Kafka $KAFKA_VERSION from Maven Central"
        rm -rf "$libs"
        mvn -B -q -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs" >&2
        touch "$libs/.complete"
    fi
    echo "$libs"
}

# The JVM flags of every Kafka tool and of the server (C1 only: starts in about half the time).
kafka_jvm() {
    echo "-Xms256m -Xmx512m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile=$RUN/kafka/log4j2.properties"
}

kafka_up() {
    local libs dir="$RUN/kafka" host=${KAFKA_ADDR%:*} port=${KAFKA_ADDR##*:}
    libs=$(kafka_libs)
    if [ -f "$dir/kafka.pid" ] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
        log "kafka already running on $KAFKA_ADDR"
        return
    fi
    tcp_open "$KAFKA_ADDR" && die "$KAFKA_ADDR is taken by another process"
    mkdir -p "$dir/data"
    printf '%s\n' \
        "process.roles=broker,controller" \
        "node.id=1" \
        "controller.quorum.voters=1@$host:$((port + 1))" \
        "listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$((port + 1))" \
        "advertised.listeners=PLAINTEXT://$host:$port" \
        "controller.listener.names=CONTROLLER" \
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" \
        "inter.broker.listener.name=PLAINTEXT" \
        "log.dirs=$dir/data" \
        "num.partitions=3" \
        "offsets.topic.replication.factor=1" \
        "transaction.state.log.replication.factor=1" \
        "transaction.state.log.min.isr=1" \
        "share.coordinator.state.topic.replication.factor=1" \
        "share.coordinator.state.topic.min.isr=1" \
        "group.initial.rebalance.delay.ms=0" \
        >"$dir/server.properties"
    printf '%s\n' \
        "rootLogger.level=INFO" \
        "rootLogger.appenderRef.stdout.ref=STDOUT" \
        "appender.stdout.type=Console" \
        "appender.stdout.name=STDOUT" \
        "appender.stdout.layout.type=PatternLayout" \
        "appender.stdout.layout.pattern=[%d] %p %m (%c)%n" \
        >"$dir/log4j2.properties"
    local jvm
    read -r -a jvm <<<"$(kafka_jvm)"
    if [ ! -f "$dir/data/meta.properties" ]; then
        local cluster
        cluster=$(java "${jvm[@]}" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
        java "${jvm[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" \
            >"$dir/format.log" 2>&1 || { tail -20 "$dir/format.log" >&2; die "formatting Kafka's storage failed"; }
    fi
    : >"$dir/kafka.log"
    setsid java "${jvm[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties" </dev/null >"$dir/kafka.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
    local deadline=$((SECONDS + 90))
    until grep -q "Kafka Server started" "$dir/kafka.log"; do
        if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
            grep -E "ERROR|Exception" "$dir/kafka.log" | tail -20 >&2 || true
            die "kafka did not start within 90 s (log: $dir/kafka.log)"
        fi
        sleep 0.3
    done
    log "kafka $KAFKA_VERSION (KRaft, broker + controller) up on $KAFKA_ADDR"
}

kafka_down() {
    stop_pid kafka "$(cat "$RUN/kafka/kafka.pid" 2>/dev/null || true)" 30
    rm -f "$RUN/kafka/kafka.pid"
}

kafka_status() {
    if tcp_open "$KAFKA_ADDR"; then
        echo "kafka: up ($KAFKA_ADDR, Kafka $KAFKA_VERSION KRaft)"
    else
        echo "kafka: down"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------

command=${1:-}
shift || true
services=("$@")
if [ ${#services[@]} -eq 0 ]; then
    # `down` with no names stops everything this script may have started.
    if [ "$command" = down ]; then services=(kafka mongodb opensearch); else services=(mongodb opensearch); fi
fi
for service in "${services[@]}"; do
    case "$service" in
        mongodb | opensearch | kafka | postgresql) ;;
        *) die "unknown service $service (mongodb, opensearch, kafka, postgresql)" ;;
    esac
done
mkdir -p "$RUN"
chmod 755 "$RUN"
case "$command" in
    up)
        for service in "${services[@]}"; do "${service}_up"; done
        ;;
    down)
        for service in "${services[@]}"; do
            "${service}_down"
            # FerretDB's storage goes with it.
            if [ "$service" = mongodb ]; then postgresql_down; fi
        done
        ;;
    status)
        failed=0
        for service in "${services[@]}"; do "${service}_status" || failed=1; done
        exit $failed
        ;;
    env)
        echo "export RAMPART_TEST_SERVICES=1"
        echo "export RAMPART_TEST_MONGODB_URI=mongodb://$MONGODB_ADDR/?directConnection=true"
        echo "export RAMPART_TEST_ELASTICSEARCH_URL=$(opensearch_url)"
        echo "export RAMPART_TEST_KAFKA_BROKERS=$KAFKA_ADDR"
        # Kafka's own command-line tools (console producer/consumer, consumer groups) for tests.
        echo "export RAMPART_TEST_KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs"
        # FerretDB itself, for tests that start one of their own on its SQLite backend (inside a
        # network namespace, where PostgreSQL cannot run: it refuses root).
        echo "export RAMPART_TEST_FERRETDB_BIN=$(ferretdb_bin)"
        ;;
    *)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
