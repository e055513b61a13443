#!/usr/bin/env bash
# Tests/Shards/ingest-test.sh: the sharded ingest end to end, on a private `scripts/stack up
# --shards 2` (its own directory and ports; stopped at the end, also on failure). Run by
# scripts/checks/shards-ingest (so by scripts/test); needs fieldlog-backend, fieldlog-device and
# fieldlog-lab built (FIELDLOG_BIN_DIR, default .build/debug).
#
# `fieldlog-lab run shards` on that stack: real `fieldlog-device` processes whose devices land on
# both shards, two real `fieldlog-backend ingest` processes routing by the shard map
# (FIELDLOG_SHARDS), each shard's MariaDB SIGKILLed once and restarted (while one is down the
# devices on the other must keep being acked: the lab fails the run otherwise), a device moved
# between the shards mid-stream (`scripts/shards move`), device kills; then heal, drain, and the
# lab's independent checker (device SQLite logs against the rows, read through the Spider front
# end): 0 unexplained, 0 duplicated, 0 acked-but-missing, and `fieldlog-backend audit` through
# the front end exits 0. Then every query of the Grafana dashboard (deploy/grafana), its macros
# and variables expanded as Grafana's MySQL data source does, runs through the front end and the
# reading panels show the lab's devices. Replay a failing run: FIELDLOG_SHARDS_INGEST_TEST_SEED.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"

export FIELDLOG_REDIS_PORT="${FIELDLOG_SHARDS_INGEST_TEST_REDIS_PORT:-15281}"
export FIELDLOG_MQTT_PORT="${FIELDLOG_SHARDS_INGEST_TEST_MQTT_PORT:-15282}"
export FIELDLOG_MARIADB_PORT="${FIELDLOG_SHARDS_INGEST_TEST_MARIADB_PORT:-15283}"
export FIELDLOG_SHARD_PORT="${FIELDLOG_SHARDS_INGEST_TEST_SHARD_PORT:-15300}"
bin="${FIELDLOG_BIN_DIR:-$here/.build/debug}"
export FIELDLOG_BACKEND_BIN="$bin/fieldlog-backend"
duration="${FIELDLOG_SHARDS_INGEST_TEST_DURATION:-36}"
seed="${FIELDLOG_SHARDS_INGEST_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
dir="$(mktemp -d /tmp/fieldlog-shards-ingest.XXXXXX)"
chmod 755 "$dir"
cleanup() {
  scripts/stack down --dir "$dir" >/dev/null 2>&1 || true
  [ "${FIELDLOG_SHARDS_TEST_KEEP:-0}" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT

say() { printf '[shards-ingest-test] %s\n' "$*"; }
fail() { printf '[shards-ingest-test] FAIL: %s\n' "$*" >&2; exit 1; }

for b in fieldlog-backend fieldlog-device fieldlog-lab; do
  [ -x "$bin/$b" ] || fail "$bin/$b is not built (swift build)"
done
start=$SECONDS
scripts/stack up --shards 2 --dir "$dir" >"$dir/stack-up.log" 2>&1 || { tail -n 30 "$dir/stack-up.log"; fail "scripts/stack up --shards 2"; }
grep -q 'front end:.*Spider tables' "$dir/stack-up.log" || { cat "$dir/stack-up.log"; fail "the front end has no tables"; }
say "2 shards and the front end up in $((SECONDS - start)) s"

# ---------------------------------------------------------------- the lab
lab_status=0
"$bin/fieldlog-lab" run shards --stack-dir "$dir" --work-dir "$dir/lab" --seed "$seed" --duration "${duration}s" \
  --drain-timeout 90s --progress-every 10 >"$dir/lab-report.txt" 2>"$dir/lab-progress.log" || lab_status=$?
sed 's/^/[shards-ingest-test] /' "$dir/lab-report.txt"
if [ "$lab_status" -ne 0 ]; then
  tail -n 20 "$dir/lab-progress.log" >&2
  for f in "$dir"/lab/logs/ingest*.log; do echo "---- $f"; grep -E 'error|critical|FL001|shard' "$f" | tail -n 15; done >&2
  fail "fieldlog-lab run shards (seed $seed) exit $lab_status"
fi
report="$(cat "$dir/lab-report.txt")"
for want in "unexplained losses: 0" "acked but missing:  0" "duplicates:         0" "audit:              exit 0" "verdict:            PASS"; do
  [[ "$report" == *"$want"* ]] || fail "the lab report lacks '$want'"
done
for k in 1 2; do
  [[ "$report" == *"note: shard $k down: devices on other shards acked"* ]] || fail "shard $k was not killed and watched in this run"
done
[[ "$report" == *"moved to the other shard mid-stream"* ]] || fail "no device was moved between the shards"
grep -q 'refused by shard' "$dir"/lab/logs/ingest*.log && say "ingest saw FL001 (map changed) and routed again: $(cat "$dir"/lab/logs/ingest*.log | grep -c 'refused by shard') time(s)"
say "lab: $(grep -E '^  (readings appended|stored):' "$dir/lab-report.txt" | tr -s ' ' | tr '\n' ';')"

# ---------------------------------------------------------------- Grafana's SQL through the front end
set -a; . "$dir/stack.env"; set +a
front() { scripts/shards sql front --dir "$dir" "$@"; }
devices="$(front -e "SELECT device_id FROM devices WHERE device_id LIKE 'lab-%' ORDER BY device_id")"
[ "$(echo "$devices" | wc -l)" -ge 6 ] || fail "the front end shows $(echo "$devices" | wc -l) lab devices, expected 6"
now="$(date +%s)"
python3 - "$now" $devices > "$dir/grafana.sql" <<'PY'
import json, re, sys
now, devices = int(sys.argv[1]), sys.argv[2:]
d = json.load(open("deploy/grafana/dashboards/fieldlog-readings.json"))
t_from, t_to, interval = now - 3600, now + 60, 60
variables = {"device": devices, "sensor": ["temperature", "humidity"]}
def expand(sql):
    s = sql.replace("$__interval", f"'{interval}s'")
    s = re.sub(r"\$__timeGroupAlias\(([^,()]+),\s*'(\d+)s'\)", r'cast(cast(UNIX_TIMESTAMP(\1)/(\2) as signed)*\2 as signed) AS "time"', s)
    s = re.sub(r"\$__timeFilter\(([^()]+)\)", rf"\1 BETWEEN FROM_UNIXTIME({t_from}) AND FROM_UNIXTIME({t_to})", s)
    for name, values in variables.items():
        s = s.replace("$" + name, ",".join(f"'{v}'" for v in values))
    assert not re.search(r"\$[A-Za-z_]", s), s   # a JSON path ('$."temp"') is not a macro
    return " ".join(s.split())
queries = [("variable " + v["name"], v["query"]) for v in d["templating"]["list"]]
queries += [(p["title"], t["rawSql"]) for p in d["panels"] for t in p.get("targets", [])]
for name, sql in queries:
    print(f"{name}\t{expand(sql)}")
PY
n=0
while IFS=$'\t' read -r name sql; do
  out="$(front -e "SET time_zone = '+00:00'; $sql" 2>&1)" || fail "Grafana query '$name' failed through the front end: $out"
  rows="$(printf '%s' "$out" | grep -c . || true)"
  case "$name" in
    Readings|"Readings stored per interval"|"Fleet progress"|"variable device"|"variable sensor")
      [ "$rows" -gt 0 ] || fail "Grafana query '$name' returned no rows through the front end" ;;
  esac
  say "grafana '$name': $rows row(s)"
  n=$((n + 1))
done < "$dir/grafana.sql"
[ "$n" -ge 7 ] || fail "only $n Grafana queries found in the dashboard"
# the lab's devices in the Readings panel: each has its two sensors
for d in $devices; do
  grep -q "^Readings	" "$dir/grafana.sql" || break
  front -e "SET time_zone = '+00:00'; $(grep -P '^Readings\t' "$dir/grafana.sql" | cut -f2-)" | grep -q "$d temperature" \
    || fail "the Readings panel shows no temperature of $d"
done
scripts/shards check --dir "$dir" > "$dir/check.log" 2>&1 || { cat "$dir/check.log"; fail "scripts/shards check"; }
say "scripts/shards check: every map copy at one version, every device's rows on its shard only"
say "PASS in $((SECONDS - start)) s (seed $seed)"
