#!/usr/bin/env bash
# Tests/Shards/shards-test.sh: the shard map, the Spider front end and moving devices, on a
# private `scripts/stack up --shards 2` (its own directory and ports; stopped at the end, also on
# failure). Run by scripts/checks/shards (so by scripts/test); needs fieldlog-backend built.
#
# Writers stand in for the sharded ingest (docs/sharding.md, "How ingest routes"): each streams
# one device's batches of 10 readings, acks only after COMMIT, and follows the protocol the Swift
# ingest will: route by the cached map, start every transaction with `CALL fl_fence(version)`,
# reload the map on SQLSTATE FL001, store nothing of a device that is moving (its batch stays
# unacked, the device keeps it and sends it again). A sleep inside each transaction keeps
# transactions in flight when a map change arrives. While they write:
#   - a device is moved from shard 1 to 2 and another from 2 to 1 (`scripts/shards move`);
#   - a move interrupted after its mark (writes through the front end for that device are
#     refused meanwhile), then resumed; one interrupted after its switch, then resumed;
#   - a move marked and copied, then cancelled;
#   - shard 2 killed for 4 s: the devices on shard 1 keep being acked, those on shard 2 not; then
#     restarted, and they resume.
# Then: every device's readings are 1…N exactly once, on its shard only (scripts/shards check),
# the same through the front end, and `fieldlog-backend audit` through the front end finds
# nothing missing. With FIELDLOG_SHARDS_TEST_GALERA=2 each shard is a 2-node Galera cluster and
# the writers use node 2 while map changes go to node 1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"

export FIELDLOG_REDIS_PORT="${FIELDLOG_SHARDS_TEST_REDIS_PORT:-15081}"
export FIELDLOG_MQTT_PORT="${FIELDLOG_SHARDS_TEST_MQTT_PORT:-15082}"
export FIELDLOG_MARIADB_PORT="${FIELDLOG_SHARDS_TEST_MARIADB_PORT:-15083}"
export FIELDLOG_SHARD_PORT="${FIELDLOG_SHARDS_TEST_SHARD_PORT:-15100}"
galera="${FIELDLOG_SHARDS_TEST_GALERA:-0}"
dir="$(mktemp -d /tmp/fieldlog-shards-test.XXXXXX)"
chmod 755 "$dir"
writers=()
cleanup() {
  local p
  for p in "${writers[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/stack down --dir "$dir" >/dev/null 2>&1 || true
  [ "${FIELDLOG_SHARDS_TEST_KEEP:-0}" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT

say() { printf '[shards-test] %s\n' "$*"; }
fail() { printf '[shards-test] FAIL: %s\n' "$*" >&2; exit 1; }
shards() { scripts/shards "$@" --dir "$dir"; }

start=$SECONDS
if [ "$galera" -gt 0 ]; then scripts/stack up --shards 2 --galera "$galera" --dir "$dir" >"$dir/stack-up.log" 2>&1
else scripts/stack up --shards 2 --dir "$dir" >"$dir/stack-up.log" 2>&1; fi || { tail -n 30 "$dir/stack-up.log"; fail "scripts/stack up --shards 2"; }
set -a; . "$dir/stack.env"; set +a
grep -q 'front end:.*Spider tables' "$dir/stack-up.log" || { cat "$dir/stack-up.log"; fail "the front end has no tables (is fieldlog-backend built?)"; }
say "2 shards$([ "$galera" -gt 0 ] && echo " of $galera Galera nodes") and the front end up in $((SECONDS - start)) s"

# ---------------------------------------------------------------- the map
# bucket = CRC-32/IEEE of the id MOD 4096; the initial map gives bucket b to shard b MOD 2 + 1
[ "$(shards sql 1 -e "SELECT fl_bucket('dev-a'), CRC32('dev-a') MOD 4096")" = "$(printf '%s\t%s' $(( $(printf 'dev-a' | gzip -c | tail -c8 | od -An -tu4 -N4) % 4096 )) $(( $(printf 'dev-a' | gzip -c | tail -c8 | od -An -tu4 -N4) % 4096 )))" ] \
  || fail "fl_bucket is not CRC-32/IEEE (zlib's) MOD 4096"
home() { shards where "$1" | sed -n 's/.*\tshard \([0-9]*\).*/\1/p'; }
# devices: two that start on each shard
devices=(); on1=0; on2=0
for i in $(seq 1 40); do
  d="dev-$i"; h="$(home "$d")"
  if [ "$h" = 1 ] && [ $on1 -lt 2 ]; then devices+=("$d"); on1=$((on1 + 1)); fi
  if [ "$h" = 2 ] && [ $on2 -lt 2 ]; then devices+=("$d"); on2=$((on2 + 1)); fi
  [ ${#devices[@]} = 4 ] && break
done
[ ${#devices[@]} = 4 ] || fail "could not find two devices per shard"
say "devices ${devices[*]} (shards $(for d in "${devices[@]}"; do printf '%s ' "$(home "$d")"; done))"

# ---------------------------------------------------------------- the writers (ingest stand-ins)
node() { # the node a writer uses on shard K: the last address (node 2 with Galera)
  local v="FIELDLOG_SHARD_${1}_ADDRESSES"; local a="${!v##*,}"; echo "$a"
}
wsql() { # ADDRESS: mariadb on it
  mariadb --no-defaults -u "$FIELDLOG_MARIADB_USER" -p"$FIELDLOG_MARIADB_PASSWORD" -h "${1%:*}" -P "${1##*:}" -D fieldlog --batch --skip-column-names "${@:2}"
}
writer() { # DEVICE: streams batches of 10 until $dir/stop exists; acks (advances) only after COMMIT
  local d="$1" seq=1 version=0 shard=0 moving=- epoch=7 k v best rows out refusals=0 moved_waits=0 conflicts=0 down=0
  reload() { # the map of the copy with the highest version
    best=0; version=0
    for k in 1 2; do
      v="$(wsql "$(node "$k")" -e "SELECT version FROM shard_map WHERE id = 1" 2>/dev/null || echo 0)"
      [ "${v:-0}" -gt "$version" ] && { version="$v"; best="$k"; }
    done
    read -r shard moving < <(wsql "$(node "$best")" -e "SELECT fl_shard_of('$d'), COALESCE((SELECT moving_to FROM shard_overrides WHERE device_id = '$d'), '-')")
  }
  reload
  while [ ! -e "$dir/stop" ]; do
    if [ "$moving" != - ]; then moved_waits=$((moved_waits + 1)); sleep 0.2; reload; continue; fi
    rows=""
    for ((s = seq; s < seq + 10; s++)); do
      rows="$rows${rows:+,}('$d', $epoch, $s, $((1795932000000 + s * 1000)), FROM_UNIXTIME($((1795932000 + s))), 0, NOW(3), NULL, '{\"temp\":$s}')"
    done
    if out="$(wsql "$(node "$shard")" -e "START TRANSACTION; CALL fl_fence($version);
          INSERT IGNORE INTO devices (device_id, protocol, first_seen_at) VALUES ('$d', 'fieldlog', NOW(3));
          INSERT IGNORE INTO epochs (device_id, epoch, first_seen_at) VALUES ('$d', $epoch, NOW(3));
          INSERT IGNORE INTO device_sensors (device_id, sensor) VALUES ('$d', 'temp');
          INSERT IGNORE INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, missing_sensors, vals) VALUES $rows;
          INSERT IGNORE INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at) VALUES ('$d', $epoch, $seq, $((seq + 9)), NOW(3));
          DO SLEEP(0.02); COMMIT;" 2>&1)"; then
      seq=$((seq + 10))          # committed: acked
      echo "$((seq - 1))" > "$dir/acked-$d.tmp" && mv "$dir/acked-$d.tmp" "$dir/acked-$d"
    elif [[ "$out" == *"shard map changed"* ]]; then
      refusals=$((refusals + 1)); reload
    elif [[ "$out" == *"Deadlock"* || "$out" == *"WSREP"* ]]; then
      conflicts=$((conflicts + 1)); sleep 0.05   # a Galera conflict (the map change aborted us): retry the same batch
    elif [[ "$out" == *"Can't connect"* || "$out" == *"Lost connection"* || "$out" == *"gone away"* ]]; then
      down=$((down + 1)); sleep 0.2              # the shard is down: nothing acked, retry the same batch
    else
      echo "writer $d: $out" >&2; exit 1
    fi
  done
  echo "$((seq - 1))" > "$dir/acked-$d"
  echo "writer $d: $((seq - 1)) readings acked, $refusals fence refusals (map changed), $moved_waits waits while moving, $conflicts conflicts retried, $down attempts while its shard was down"
}
for d in "${devices[@]}"; do writer "$d" > "$dir/writer-$d.log" 2>&1 & writers+=($!); done
progress() { shards sql front -e "SELECT COUNT(*) FROM readings WHERE device_id = '$1'"; }
wait_progress() { # DEVICE READINGS: until the front end sees that many of the device
  local deadline=$((SECONDS + 120))
  until [ "$(progress "$1")" -ge "$2" ]; do [ $SECONDS -lt $deadline ] || fail "$1 did not reach $2 readings"; sleep 0.3; done
}

A="${devices[0]}"; B="${devices[2]}"; C="${devices[1]}"; D="${devices[3]}"   # A, C on shard 1; B, D on shard 2
wait_progress "$A" 300
say "moving $A 1 -> 2 and $B 2 -> 1 while all four write"
shards move "$A" 2 > "$dir/move-A.log" 2>&1 || { cat "$dir/move-A.log"; fail "move $A"; }
shards move "$B" 1 > "$dir/move-B.log" 2>&1 || { cat "$dir/move-B.log"; fail "move $B"; }
[ "$(home "$A")" = 2 ] && [ "$(home "$B")" = 1 ] || fail "the map does not have $A on 2 and $B on 1"

# interrupted after the mark: the device is frozen; the front end refuses writes for it
FIELDLOG_SHARDS_STOP_AFTER=mark shards move "$C" 2 > "$dir/move-C1.log" 2>&1 && fail "the move should have stopped after its mark"
shards where "$C" | grep -q 'moving to shard 2' || fail "$C is not marked moving"
if out="$(shards sql front -e "INSERT INTO commands (request_id, device_id, command, payload, sent_at) VALUES ('r-$C', '$C', 'replay', '{}', NOW(3))" 2>&1)"; then
  fail "the front end took a command for a device being moved"
fi
[[ "$out" == *"is being moved"* ]] || fail "a write for a moving device was refused with an unexpected error: $out"
n1="$(progress "$C")"; sleep 1.5; n2="$(progress "$C")"
[ "$n1" = "$n2" ] || fail "$C got readings while marked moving ($n1 -> $n2)"
shards move "$C" 2 > "$dir/move-C2.log" 2>&1 || { cat "$dir/move-C2.log"; fail "resumed move of $C"; }
grep -q 'resuming' "$dir/move-C2.log" || fail "the second run did not resume the move"

# interrupted after the switch: the source still has rows; the next run deletes them
FIELDLOG_SHARDS_STOP_AFTER=switch shards move "$D" 1 > "$dir/move-D1.log" 2>&1 && fail "the move should have stopped after its switch"
shards check > "$dir/check-mid.log" 2>&1 && fail "check should see the source's rows left by an interrupted move"
shards move "$D" 1 > "$dir/move-D2.log" 2>&1 || { cat "$dir/move-D2.log"; fail "finishing the move of $D"; }
grep -q 'deleting what an interrupted move left' "$dir/move-D2.log" || fail "the second run did not clean the source"

# marked and copied, then cancelled: back on the source, nothing left on the target
FIELDLOG_SHARDS_STOP_AFTER=copy shards move "$A" 1 > "$dir/move-A2.log" 2>&1 && fail "the move should have stopped after its copy"
shards cancel "$A" > "$dir/cancel-A.log" 2>&1 || { cat "$dir/cancel-A.log"; fail "cancel $A"; }
[ "$(home "$A")" = 2 ] || fail "$A is not back on shard 2 after the cancel"
[ "$(shards sql 1 -e "SELECT COUNT(*) FROM readings WHERE device_id = '$A'")" = 0 ] || fail "the cancelled move left rows of $A on shard 1"

# a shard down: only its devices' acks stop (the writers use node 2 of a Galera shard: kill that one)
node_of_writers=$([ "$galera" -gt 0 ] && echo 2 || echo 1)
on1=(); on2=()
for d in "${devices[@]}"; do if [ "$(home "$d")" = 1 ]; then on1+=("$d"); else on2+=("$d"); fi; done
acked() { cat "$dir/acked-$1" 2>/dev/null || echo 0; }
scripts/stack shard-kill 2 "$node_of_writers" --dir "$dir" >/dev/null
sleep 1; before=(); for d in "${devices[@]}"; do before+=("$(acked "$d")"); done
sleep 3; i=0
for d in "${devices[@]}"; do
  now="$(acked "$d")"
  if [ "$(home "$d")" = 1 ]; then [ "$now" -gt "${before[$i]}" ] || fail "$d (shard 1) made no progress while shard 2 was down"
  else [ "$now" = "${before[$i]}" ] || fail "$d (shard 2) was acked while its shard was down"; fi
  i=$((i + 1))
done
say "shard 2 down for 4 s: ${on1[*]} (shard 1) kept being acked, ${on2[*]} (shard 2) not"
scripts/stack shard-start 2 "$node_of_writers" --dir "$dir" > "$dir/shard-start.log" 2>&1 || { cat "$dir/shard-start.log"; fail "restarting shard 2"; }
for d in "${on2[@]}"; do
  n="$(acked "$d")"; deadline=$((SECONDS + 60))
  until [ "$(acked "$d")" -gt "$n" ]; do [ $SECONDS -lt $deadline ] || fail "$d did not resume after shard 2 came back"; sleep 0.3; done
done
say "shard 2 back: its devices are acked again"

# ---------------------------------------------------------------- the end state
touch "$dir/stop"
for p in "${writers[@]}"; do wait "$p" || { cat "$dir"/writer-*.log; fail "a writer failed"; }; done
writers=()
cat "$dir"/writer-*.log | sed 's/^/[shards-test] /'
for d in "${devices[@]}"; do
  h="$(home "$d")"; o=$((3 - h)); last="$(cat "$dir/acked-$d")"
  [ "$last" -ge 100 ] || fail "$d: only $last readings acked"
  got="$(shards sql "$h" -e "SELECT COUNT(*), MIN(seq), MAX(seq), COUNT(DISTINCT seq) FROM readings WHERE device_id = '$d'")"
  [ "$got" = "$(printf '%s\t1\t%s\t%s' "$last" "$last" "$last")" ] || fail "$d on its shard $h: count/min/max/distinct = ${got//$'\t'/ }, expected $last readings 1…$last"
  [ "$(shards sql "$o" -e "SELECT COUNT(*) FROM readings WHERE device_id = '$d'")" = 0 ] || fail "$d has readings on shard $o too"
  [ "$(shards sql front -e "SELECT COUNT(*), COUNT(DISTINCT seq) FROM readings WHERE device_id = '$d'")" = "$(printf '%s\t%s' "$last" "$last")" ] \
    || fail "$d through the front end is not $last readings once each"
done
shards check | sed 's/^/[shards-test] /'
[ "$(shards sql front -e "SELECT COUNT(*) FROM shard_map_log")" -ge 10 ] || fail "the map log does not hold every change"
# the product's audit through the front end
out="$(FIELDLOG_MARIADB_ADDRESSES="$FIELDLOG_FRONTEND_ADDRESS" "${FIELDLOG_BACKEND_BIN:-.build/debug/fieldlog-backend}" audit 2>&1)" \
  || { echo "$out"; fail "fieldlog-backend audit through the front end found records missing (or failed)"; }
[[ "$out" == *"RESULT: nothing missing"* ]] || { echo "$out"; fail "audit output"; }
say "audit through the front end: nothing missing ($(echo "$out" | grep -c '^device') devices)"
say "PASS in $((SECONDS - start)) s"
