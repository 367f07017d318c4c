#!/usr/bin/env bash
# The quickstart, end to end through the public API: build, start the gateway on its embedded
# defaults, train a real scikit-learn model as a local job whose code travels with it (the
# iris directory, uploaded to the gateway's artifact store), follow its logs, deploy the job's
# output on the local target (a real MLServer) and print a prediction.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mlgw-target}"
step() { printf '\n==> %s\n' "$*"; }

step "Preparing: wasm32-wasip2 target, Python with scikit-learn and MLServer"
if command -v rustup >/dev/null; then rustup target add wasm32-wasip2 >/dev/null; fi
tests/setup-python
venv="${MLGW_TEST_VENV:-$HOME/.cache/mlgw-venv}"
export PATH="$venv/bin:$PATH"

step "Building mlgw (the gateway and its bundled plugins)"
cargo build -p mlgw --bin mlgw
mlgw="$CARGO_TARGET_DIR/debug/mlgw"

step "Starting the gateway on its embedded defaults: mlgw serve"
log="$(mktemp)"
"$mlgw" serve >"$log" 2>&1 &
gateway=$!
trap 'kill $gateway 2>/dev/null; wait $gateway 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "mlgw listening on" "$log" && break
  kill -0 $gateway 2>/dev/null || { cat "$log"; echo "gateway failed to start" >&2; exit 1; }
  sleep 0.1
done
grep "mlgw listening on" "$log"
"$mlgw" targets

step "Submitting a training job with its code (deploy/quickstart/iris) to the default target"
job=$("$mlgw" submit --name train-iris --hp C=0.5 --code deploy/quickstart/iris -- python train.py)
echo "job $job"

step "Following its logs: mlgw logs -f $job"
"$mlgw" logs -f "$job"
"$mlgw" wait "$job"

step "Deploying the trained model: the job's output"
"$mlgw" undeploy quickstart-iris >/dev/null 2>&1 || true
"$mlgw" deploy --name quickstart-iris --model-uri "$job" --format sklearn --wait 120

step "Predicting through the gateway (Open Inference Protocol V2)"
"$mlgw" predict quickstart-iris --data '[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]'

step "Cleaning up the endpoint"
"$mlgw" undeploy quickstart-iris >/dev/null
echo "done: the job and the endpoint's history stay in the gateway's store (mlgw list, mlgw endpoints --all)"
