#!/usr/bin/env bash
# Runs the claim tests (pytest -m claim: tests that train or sample, then assert a threshold) under the CPU
# kernels and thread counts that other machines would use, so a claim that holds only on this CPU shows here.
#
#   bash scripts/test_claims_everywhere.sh            # every combination below; extra args go to pytest
#   COMBOS="avx2:1 default:2" bash scripts/test_claims_everywhere.sh
#
# A combination is KERNELS:THREADS. KERNELS is torch's CPU kernel set (ATEN_CPU_CAPABILITY: default, avx2,
# avx512 where this CPU has it), or mkl-compatible: this CPU's torch kernels with MKL's generic code path
# (MKL_CBWR=COMPATIBLE). MKL picks its matrix kernels by CPU vendor, so an Intel CPU multiplies matrices
# with other kernels than an AMD one does, and no other setting reproduces that here. THREADS is
# torch.set_num_threads (PROMPT_OPTIM_TORCH_THREADS, read by tests/conftest.py). Generated test assets are
# cached per kernel set (devtools/asset_cache.py), so each kernel set also builds its own, as a fresh
# machine would. Prints one line per combination and exits 1 if any failed; logs go to $LOGS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(bash scripts/setup_runtime.sh)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ -z "${COMBOS:-}" ]; then
  kernels="default avx2"
  grep -qw avx512f /proc/cpuinfo 2>/dev/null && kernels="$kernels avx512"
  kernels="$kernels mkl-compatible"
  COMBOS=""
  for k in $kernels; do for t in 1 2; do COMBOS="$COMBOS $k:$t"; done; done
fi
LOGS="${LOGS:-$(mktemp -d /tmp/claims-everywhere.XXXXXX)}"
mkdir -p "$LOGS"

failed=0
summary=()
for combo in $COMBOS; do
  kernel="${combo%%:*}" threads="${combo##*:}"
  log="$LOGS/$kernel-$threads.log"
  if [ "$kernel" = mkl-compatible ]; then
    settings=(MKL_CBWR=COMPATIBLE)
  else
    settings=(ATEN_CPU_CAPABILITY="$kernel")
  fi
  echo "== ${settings[*]} threads=$threads (log: $log)"
  start=$(date +%s)
  env "${settings[@]}" PROMPT_OPTIM_TORCH_THREADS="$threads" OMP_NUM_THREADS="$threads" \
    "$PROMPT_OPTIM_PYTHON" -m pytest -p no:logging -m claim -s -rA "$@" > "$log" 2>&1
  rc=$?
  result="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | tr -d '=')"
  # the per-seed and per-arm numbers the claim tests print
  grep -E '^(seed [0-9]|MinorityPrompt vs|GFlowNet|reward maximization|reference policy|lab baseline|lab reward:)' "$log" | sed 's/^/   /'
  line="$kernel threads=$threads: rc $rc,${result} ($(( $(date +%s) - start )) s)"
  echo "$line"
  summary+=("$line")
  [ "$rc" = 0 ] || failed=1
done
echo
echo "claim tests by kernel set and thread count:"
printf '  %s\n' "${summary[@]}"
exit "$failed"
