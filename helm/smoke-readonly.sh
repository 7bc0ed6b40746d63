#!/usr/bin/env bash
# Smoke test of the image recipe without a container engine: follow the Dockerfile's steps
# into a throw-away /app tree (npm ci --omit=dev, pip install with requirements.lock as
# constraints, editable gateway), lay out a pod from the Helm chart (embedded engine, tokens
# from the Secret, per-file policy mounts), then run the container command under bubblewrap
# with a read-only root, uid/gid 10001, no capabilities, and only /tmp (tmpfs) and
# /var/lib/switchboard writable. Checks gRPC health, a Pyodide code run and a tool call.
#
#   helm/smoke-readonly.sh          (needs: bwrap, npm, the registries; ~2-3 min)
#
# Run by hand; it is not part of `make test` (it downloads packages).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="$repo/.venv/bin/python"
work="$(mktemp -d /tmp/sb-smoke.XXXXXX)"
app="$work/app"
pod="$work/pod"
bwrap_pid=""
cleanup() {
  if [[ -n "$bwrap_pid" ]] && kill -0 "$bwrap_pid" 2>/dev/null; then kill "$bwrap_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT
command -v bwrap >/dev/null || { echo "smoke: install bubblewrap (apt-get install bubblewrap)" >&2; exit 2; }

echo "smoke: building /app as the Dockerfile does (in $work)"
mkdir -p "$app/runtimes"
cp -R "$repo/pyproject.toml" "$repo/requirements.lock" "$repo/README.md" "$repo/gateway" \
  "$repo/proto" "$repo/policies" "$app/"
cp "$repo"/runtimes/package.json "$repo"/runtimes/package-lock.json "$repo"/runtimes/*.ts \
  "$repo"/runtimes/*.py "$app/runtimes/"
find "$app" -name __pycache__ -prune -exec rm -rf {} +
find "$app" -name '*_test.rego' -delete
(cd "$app/runtimes" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
"$py" -m venv "$app/.venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$app/.venv/bin/pip" install -q \
  --constraint "$app/requirements.lock" --editable "$app"
chmod 0755 "$("$app/.venv/bin/python" -c 'import deno; print(deno.find_deno_bin())')"
# The image builds at /app: point the editable finder and script shebangs there.
grep -rl "$app" "$app/.venv/bin" "$app"/.venv/lib/python3.11/site-packages/__editable__* \
  | xargs sed -i "s#$app#/app#g"

echo "smoke: laying out the pod from the chart"
"$py" - "$repo" "$pod" <<'EOF'
import base64, sys
from pathlib import Path
import helm_python, yaml
repo, pod = Path(sys.argv[1]), Path(sys.argv[2])
values = {"policy": {"engine": "embedded"}, "sandbox": {"workers": 1},
          "secrets": {"tokens": {"tok-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]}}},
          "backends": [{"name": "ledger", "app": "gateway.demo.ledger:app"}]}
out = helm_python.Chart.load(repo / "helm/switchboard").render(values, name="sb", namespace="smoke")
docs = [d for k, t in out.items() if k.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
get = lambda kind, name=None: next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))
cfg = yaml.safe_load(get("ConfigMap", "sb-switchboard")["data"]["config.yaml"])
cfg["listen"] = "127.0.0.1:0"
(pod / "etc/switchboard/secrets").mkdir(parents=True)
(pod / "etc/switchboard/config.yaml").write_text(yaml.safe_dump(cfg))
tokens = base64.b64decode(get("Secret")["data"]["tokens.yaml"])
(pod / "etc/switchboard/secrets/tokens.yaml").write_bytes(tokens)
policies = get("ConfigMap", "sb-switchboard-policies")["data"]
gw = next(c for c in get("Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway")
for m in gw["volumeMounts"]:
    if m["name"] == "policies":
        target = pod / m["mountPath"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(policies[m["subPath"]])
(pod / "var/lib/switchboard").mkdir(parents=True)
EOF
chmod -R a+rX "$work"

echo "smoke: starting the container command (read-only root, uid 10001, no capabilities)"
: >"$work/serve.log"
bwrap --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
  --ro-bind /etc/ssl /etc/ssl --ro-bind /etc/passwd /etc/passwd --ro-bind /etc/group /etc/group \
  --ro-bind "$(readlink -f "$app/.venv/bin/python" | sed 's#/bin/python.*##')" \
            "$(readlink -f "$app/.venv/bin/python" | sed 's#/bin/python.*##')" \
  --ro-bind "$app" /app --ro-bind "$pod/etc/switchboard" /etc/switchboard \
  --bind "$pod/var/lib/switchboard" /var/lib/switchboard \
  --tmpfs /tmp --proc /proc --dev /dev \
  --unshare-user --uid 10001 --gid 10001 --unshare-pid --unshare-ipc --die-with-parent \
  --cap-drop ALL --remount-ro / --chdir /app --clearenv \
  --setenv PATH /app/.venv/bin:/usr/bin:/bin --setenv HOME /tmp --setenv DENO_DIR /tmp/deno \
  --setenv PYTHONDONTWRITEBYTECODE 1 --setenv PYTHONUNBUFFERED 1 \
  /app/.venv/bin/switchboard serve --config /etc/switchboard/config.yaml >"$work/serve.log" 2>&1 &
bwrap_pid=$!
for _ in $(seq 1 180); do
  grep -q '^LISTENING grpc://' "$work/serve.log" && break
  kill -0 "$bwrap_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 1
done
addr="$(grep '^LISTENING grpc://' "$work/serve.log" | sed 's#.*grpc://##')"
[[ -n "$addr" ]] || { tail -40 "$work/serve.log" >&2; exit 1; }

"$py" - "$addr" <<'EOF'
import sys
import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from gateway._proto.switchboard.v1 import gateway_pb2 as pb, gateway_pb2_grpc as pb_grpc
channel = grpc.insecure_channel(sys.argv[1])
health = health_pb2_grpc.HealthStub(channel)
for service in ("", "switchboard.v1.Gateway"):
    status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING, (service, status)
stub, md = pb_grpc.GatewayStub(channel), [("authorization", "Bearer tok-agent")]
run = stub.Execute(pb.ExecuteRequest(request_id="smoke-code", code_run=pb.CodeRun(
    source="from sdk import ledger\nprint('pyodide ok')\nledger.get_balance(account='A1')",
    timeout_ms=10000)), metadata=md, timeout=60)
assert run.decision.route == "code" and not run.error.code and "pyodide ok" in run.stdout, run
args = struct_pb2.Struct(); args.update({"account": "A1"})
tool = stub.Execute(pb.ExecuteRequest(request_id="smoke-tool", tool_call=pb.ToolCall(
    name="ledger.get_balance", arguments=args)), metadata=md, timeout=30)
assert tool.decision.route == "tool" and not tool.error.code, tool
print("smoke: health SERVING, code run and tool call ok")
EOF
test -s "$pod/var/lib/switchboard/audit.jsonl"
kill -TERM "$(ps -o pid= --ppid "$(ps -o pid= --ppid "$bwrap_pid" | head -1)" | head -1)"
wait "$bwrap_pid" || true
echo "smoke: passed (audit file written to the state volume, SIGTERM drained)"
