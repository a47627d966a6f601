#!/usr/bin/env bash
# A representative subset of the result commands in docs/results.md, shortened to a
# few rounds, for refactors that must not change behaviour: run it before and after,
# then compare the JSON files (`python benchmarks/regression_compare.py A B`).
#   bash benchmarks/regression_subset.sh OUT_DIR [DATA_PATH]
set -euo pipefail
OUT="${1:?usage: regression_subset.sh OUT_DIR [DATA_PATH]}"
DATA="${2:-../shared/data/ml-100k}"
mkdir -p "$OUT"
run() {  # name config rounds
  local name=$1 cfg=$2 rounds=$3
  local extra=()
  [ "$rounds" != "-" ] && extra+=(--rounds "$rounds")
  if grep -q ml-100k "$cfg" || grep -q movielens "$cfg"; then extra+=(--data-path "$DATA"); fi
  secrelay run "$cfg" --out "$OUT/runs/$name" --overwrite "${extra[@]}" >"$OUT/$name.log" 2>&1 \
    || { echo "$name FAILED (see $OUT/$name.log)"; return 0; }
  python - "$OUT/runs/$name" "$OUT/$name.json" <<'PY'
import json, sys, pathlib
rd = pathlib.Path(sys.argv[1])
recs = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines() if l.strip()]
keep = ("round", "gauc", "auc", "logloss")
out = {"rounds": [{k: r.get(k) for k in keep} for r in recs]}
led = rd / "privacy_ledger.jsonl"
if led.exists():
    out["ledger_lines"] = len(led.read_text().splitlines())
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
PY
  echo "$name ok"
}
run fedavg           examples/fedavg_ml100k.toml            2
run dp_fedavg_u8_e8  examples/dp_fedavg_u8_e8.toml          2
run dp_fedavg_secagg examples/dp_fedavg_secagg_z0.69.toml   2
run relayrec_quick   examples/relayrec_quick.toml           -
run relayrec_secagg  examples/relayrec_secagg_ml100k.toml   2
run dp_relayrec_u8   examples/dp_relayrec_u8_e8.toml        2
run lcft_quick       examples/lcft_quick.toml               -
run lcft_query_ldp   examples/lcft_query_ldp_ml100k.toml    -
run metaua_secagg    examples/metaua_secagg_ml100k.toml     2
run dp_metaua_u8_e8  examples/dp_metaua_u8_e8.toml          2
run coda_synthetic   examples/coda_synthetic.toml           -
