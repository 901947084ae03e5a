#!/usr/bin/env bash
# Validates deploy/ against real schemas, offline once installed (both validators come from PyPI
# and carry their schemas): the Kubernetes manifests with kubernetes-validate (the API's JSON
# schemas, strict: an unknown or misspelled field is an error), compose.yaml with
# check-jsonschema's copy of the Compose specification's schema. Each validator must also refuse
# a deliberately broken copy, so a validator that accepts anything cannot pass.
# (tests/deploy.rs checks what schemas cannot: that the binary accepts the ConfigMap's settings
# and that the grace periods and probes match the drain.)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-validate
if ! [ -x "$venv/bin/kubernetes-validate" ] || ! [ -x "$venv/bin/check-jsonschema" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0'
fi
kv() { "$venv/bin/kubernetes-validate" --strict --quiet "$@"; }
compose() { "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$@"; }

# Every Kubernetes resource file (kustomization.yaml is kustomize's, not an API resource).
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
kv "${manifests[@]}"
compose deploy/compose.yaml
# kustomization.yaml lists every manifest.
for f in "${manifests[@]}"; do
  grep -qx "  - $(basename "$f")" deploy/kubernetes/kustomization.yaml \
    || { echo "deploy/kubernetes/kustomization.yaml does not list $(basename "$f")"; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
refused() { # description, validator, file
  if "$2" "$3" >"$tmp/out" 2>&1; then
    echo "the validator accepted a broken copy: $1"
    exit 1
  fi
}
sed 's/^  replicas: 3$/  replicas: three/' deploy/kubernetes/deployment.yaml >"$tmp/replicas.yaml"
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/' deploy/kubernetes/deployment.yaml >"$tmp/field.yaml"
sed 's/stop_grace_period:/stop_grace_perod:/' deploy/compose.yaml >"$tmp/compose.yaml"
for pair in replicas:deploy/kubernetes/deployment.yaml field:deploy/kubernetes/deployment.yaml \
  compose:deploy/compose.yaml; do
  cmp -s "$tmp/${pair%%:*}.yaml" "${pair#*:}" && { echo "broken copy ${pair%%:*} is unchanged"; exit 1; }
done
refused "replicas: three" kv "$tmp/replicas.yaml"
refused "a misspelled Deployment field" kv "$tmp/field.yaml"
refused "a misspelled Compose service key" compose "$tmp/compose.yaml"
# The alert rules with Prometheus's own checker (Debian's prometheus package); a broken copy must
# be refused too. (tests/observability.rs runs them, and the dashboard's queries, against an edge.)
rules() { promtool check rules "$@"; }
rules deploy/prometheus/wxedge-alerts.yml >/dev/null
sed 's/ > 0.05$/ >/' deploy/prometheus/wxedge-alerts.yml >"$tmp/alerts.yml"
cmp -s "$tmp/alerts.yml" deploy/prometheus/wxedge-alerts.yml && { echo "broken copy alerts is unchanged"; exit 1; }
refused "an alert expression cut short" rules "$tmp/alerts.yml"
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"] and all(t["expr"] for p in d["panels"] for t in p["targets"])' \
  deploy/grafana/wxedge-dashboard.json
echo "deploy: ${#manifests[@]} Kubernetes manifests and compose.yaml valid; alert rules and dashboard valid; 4 broken copies refused"
