#!/bin/bash
# Checks the monitoring files in dist/ against promtool and docs/metrics.md:
#   - dist/prometheus/dms-alerts.yml        promtool check rules
#   - dist/prometheus/dms-alerts.test.yml   promtool test rules (unit tests of every alert)
#   - dist/prometheus/prometheus.example.yml promtool check config (also checks the rule file)
#   - dist/grafana/dms-dashboard.json       valid JSON
#   - every dms_* metric name used in those files is documented in docs/metrics.md
# usage: scripts/check-monitoring.sh   (needs promtool: scripts/deps.sh test)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
	echo "check-monitoring: $*" >&2
	exit 1
}

command -v promtool >/dev/null || fail "promtool not found: run scripts/deps.sh test"
command -v python3 >/dev/null || fail "python3 not found"

rules=dist/prometheus/dms-alerts.yml
tests=dist/prometheus/dms-alerts.test.yml
config=dist/prometheus/prometheus.example.yml
dashboard=dist/grafana/dms-dashboard.json
doc=docs/metrics.md
for f in "$rules" "$tests" "$config" "$dashboard" "$doc"; do
	[ -f "$f" ] || fail "$f is missing"
done

echo "== promtool check rules $rules"
promtool check rules "$rules" || fail "$rules: promtool check rules failed"

echo "== promtool test rules $tests"
promtool test rules "$tests" || fail "$tests: promtool test rules failed"

# check config resolves rule_files against the config's directory: check a copy whose
# rule_files entry is the absolute path of the rule file.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -q '^  - dms-alerts\.yml$' "$config" || fail "$config: no '  - dms-alerts.yml' rule_files entry"
sed "s|^  - dms-alerts\.yml\$|  - $PWD/$rules|" "$config" >"$tmp/prometheus.yml"
echo "== promtool check config $config (rule_files made absolute)"
promtool check config "$tmp/prometheus.yml" || fail "$config: promtool check config failed"

echo "== JSON $dashboard"
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$dashboard" || fail "$dashboard: invalid JSON"
echo "  SUCCESS"

# The dashboard's PromQL, with Grafana's variables replaced, parsed by promtool as recording rules.
echo "== PromQL of $dashboard"
python3 - "$dashboard" >"$tmp/dashboard-rules.yml" <<'EOF' || fail "$dashboard: cannot extract its queries"
import json, re, sys
d = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard\n    rules:")
for p in d["panels"]:
    for t in p.get("targets", []):
        e = re.sub(r"\$__(rate_)?interval", "1m", t["expr"])
        e = re.sub(r"\$\{?\w+\}?", ".*", e)
        print(f"      - record: panel_{p['id']}_{t['refId']}\n        expr: {json.dumps(e)}")
EOF
promtool check rules "$tmp/dashboard-rules.yml" >/dev/null || fail "$dashboard: a panel query does not parse (see above)"
echo "  SUCCESS: $(grep -c 'record:' "$tmp/dashboard-rules.yml") queries parse"

echo "== metric names against $doc"
python3 - "$doc" "$rules" "$tests" "$dashboard" <<'EOF' || fail "metric names not in $doc (see above)"
import re
import sys

doc, *files = sys.argv[1:]
# Documented names and types: the first two columns of the tables, "| `name` | type |".
documented = {}
for line in open(doc):
    m = re.match(r"\|\s*`([a-z_:]+)`\s*\|\s*([a-z]+)", line)
    if m:
        documented[m.group(1)] = m.group(2)
if not documented:
    sys.exit(f"  no metric table found in {doc}")

# Histograms (and summaries) are used through their _bucket/_sum/_count series.
suffixes = ("_bucket", "_sum", "_count")
bad = []
used = set()
for path in files:
    text = open(path).read()
    for name in sorted(set(re.findall(r"(?<![A-Za-z0-9_:])dms_[a-z_]+", text))):
        base = name
        if name not in documented:
            for s in suffixes:
                b = name[: -len(s)]
                if name.endswith(s) and documented.get(b) in ("histogram", "summary"):
                    base = b
                    break
        used.add(base)
        if base not in documented:
            bad.append((path, name))
for path, name in bad:
    print(f"  {path}: {name} is not in {doc}")
if bad:
    sys.exit(1)
print(f"  SUCCESS: {len(used)} metric names, all documented")
EOF

echo "check-monitoring: all checks passed"
