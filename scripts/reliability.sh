#!/usr/bin/env bash
# Regenerate RELIABILITY.md's figures: the fault suite (tests/faults, which writes its
# measurements to artifacts/reliability.json), the API fuzz test (examples counted), and
# the load test (bench/load_test.py); then the tables between the markers are rewritten.
#   bash scripts/reliability.sh            # everything (about 6 minutes on 2 cores)
#   LOAD_TASKS=2000 bash scripts/reliability.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export BISECT_RELIABILITY_JSON="$PWD/artifacts/reliability.json"
mkdir -p artifacts
faults_rc=0 faults_s="${FAULTS_S:-?}" fuzz_s="${FUZZ_S:-?}"
if [ -z "${RENDER_ONLY:-}" ]; then  # RENDER_ONLY=1: rewrite the tables from the last run
rm -f "$BISECT_RELIABILITY_JSON"

echo "== fault suite"
start=$(date +%s)
set +e
"$PY" -m pytest -m faults tests/faults -p no:cacheprovider -q -rxs | tee artifacts/faults.log
faults_rc=${PIPESTATUS[0]}
set -e
faults_s=$(( $(date +%s) - start ))

echo "== API fuzz test"
start=$(date +%s)
"$PY" -m pytest tests/integration/test_api_fuzz.py -p no:cacheprovider -q -k mysql \
  --hypothesis-show-statistics | tee artifacts/fuzz.log
fuzz_s=$(( $(date +%s) - start ))

echo "== load test"
"$PY" bench/load_test.py --tasks "${LOAD_TASKS:-10000}" | tee artifacts/load.log
fi

FAULTS_RC=$faults_rc FAULTS_S=$faults_s FUZZ_S=$fuzz_s PYTHONPATH="$PWD" "$PY" - <<'PY'
import json, os, re
from pathlib import Path

data = json.loads(Path(os.environ["BISECT_RELIABILITY_JSON"]).read_text())
faults_log = Path("artifacts/faults.log").read_text()
summary = [l for l in faults_log.splitlines() if re.search(r"\d+ (passed|failed)", l)]
fuzz_log = Path("artifacts/fuzz.log").read_text()
examples = re.findall(r"(\d+) passing examples?, (\d+) failing examples?, (\d+) invalid", fuzz_log)
fuzz_passed = "passed" in fuzz_log.splitlines()[-1]

def g(fault, key, default="—"):
    value = data.get(fault, {}).get(key, default)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)

rows = [
    ("kill -9 producer during batch submits (×3)",
     f"{g('producer_kill_batch_submit','tasks')} tasks in {g('producer_kill_batch_submit','batches')} batches",
     g("producer_kill_batch_submit", "tasks_lost"), g("producer_kill_batch_submit", "duplicates"),
     f"restart to ready {g('producer_kill_batch_submit','restart_to_ready_s')} s; "
     f"{g('producer_kill_batch_submit','batches_retried')} batches retried"),
    ("kill -9 producer during discovery (×2)",
     f"{g('producer_kill_discovery','expected_tasks')} tasks from {g('producer_kill_discovery','jobs')} jobs",
     g("producer_kill_discovery", "tasks_lost"), g("producer_kill_discovery", "duplicates"),
     f"killed at {g('producer_kill_discovery','killed_at_task_counts')} tasks; done "
     f"{g('producer_kill_discovery','resume_to_complete_s')} s after the last restart"),
    ("database stopped 20 s",
     f"{g('database_outage','tasks')} tasks ({g('database_outage','statuses')})",
     g("database_outage", "tasks_lost"), g("database_outage", "tasks_reclaimed"),
     f"API back {g('database_outage','api_recovery_s')} s, first claim "
     f"{g('database_outage','first_claim_after_recovery_s')} s, all done "
     f"{g('database_outage','all_done_after_recovery_s')} s after the server; "
     f"{g('database_outage','submits_refused_503')} submits refused with 503; "
     f"{g('database_outage','steps_not_recorded')} step rows not written"),
    ("kill -9 consumer alone (engines orphaned)",
     f"{g('consumer_kill_alone','tasks')} tasks, {g('consumer_kill_alone','held_by_victim')} held",
     g("consumer_kill_alone", "tasks_lost"), g("consumer_kill_alone", "double_runs"),
     f"orphans gone {g('consumer_kill_alone','orphan_engines_gone_s')} s; tasks back "
     f"{g('consumer_kill_alone','tasks_back_s')} s, done {g('consumer_kill_alone','tasks_done_s')} s "
     f"(lease {g('consumer_kill_alone','lease_s')} s)"),
    ("engines: hang, garbage, no result, 255 MB flood",
     f"{g('engine_misbehaviour','tasks')} tasks ({g('engine_misbehaviour','statuses')})",
     g("engine_misbehaviour", "tasks_lost"), g("engine_misbehaviour", "double_runs"),
     f"consumer RSS {g('engine_misbehaviour','consumer_rss_base_mb')} → peak "
     f"{g('engine_misbehaviour','consumer_rss_peak_mb')} MB; log {g('engine_misbehaviour','consumer_log_mb')} MB"),
    ("git: full disk, dead URL, missing path, silent server, missing commit",
     f"{g('git_failures','tasks')} tasks ({g('git_failures','statuses')})",
     g("git_failures", "tasks_lost"), g("git_failures", "double_runs"),
     f"fail in {g('git_failures','seconds_to_fail')} s; {g('git_failures','disk')}"),
]
table = ["| fault | tasks | lost | double claims / runs | measured |", "|---|---|---|---|---|"]
table += [f"| {' | '.join(r)} |" for r in rows]
reasons = ["| fault | `last_error` |", "|---|---|"]
for fault in ("engine_misbehaviour", "git_failures"):
    for name, text in data.get(fault, {}).get("reasons", {}).items():
        short = re.sub(r"/tmp/\S*?/(repos|cache)/", r".../\1/", text).replace("\n", " ")
        if len(short) > 200:  # the git command is long; git's own message is at the end
            short = short[:50] + " … " + short[-150:]
        reasons.append(f"| {name} | `{short}` |")
load = data.get("load_test", {})
load_table = ["| figure | value |", "|---|---|"] + [
    f"| {k} | {v} |" for k, v in load.items() if k != "measured_at"]
fuzz_src = Path("tests/integration/test_api_fuzz.py").read_text()
limit = re.search(r"max_examples=(\d+)", fuzz_src)
from producer.routes import ROUTES
ex = (", ".join(f"{p} passing / {f} failing / {i} invalid" for p, f, i in examples)
      or f"{limit.group(1) if limit else '?'} generated requests (max_examples) over "
         f"{len(ROUTES)} routes, bodies/paths/queries from hypothesis")
block = "\n".join([
    f"Fault suite: {summary[-1].strip(' =') if summary else '?'} in {os.environ['FAULTS_S']} s "
    f"(exit {os.environ['FAULTS_RC']}).", "",
    *table, "", "Reasons the tasks failed with:", "", *reasons, "",
    f"Load test (`bench/load_test.py`):", "", *load_table, "",
    f"API fuzz (`tests/integration/test_api_fuzz.py`, hypothesis over every route): {ex}; "
    f"{'no 5xx, no stack trace' if fuzz_passed else 'FAILED'}; {os.environ['FUZZ_S']} s.",
])
doc = Path("RELIABILITY.md")
text = doc.read_text()
begin, end = "<!-- figures:begin -->", "<!-- figures:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
doc.write_text(f"{head}{begin}\n{block}\n{end}{tail}")
print("RELIABILITY.md updated")
PY
exit "$faults_rc"
