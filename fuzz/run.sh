#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 600) on the stable toolchain (RUSTC_BOOTSTRAP
# allows the flags cargo-fuzz passes), growing fuzz/work/<target> from the committed seeds in
# fuzz/corpus/<target>. Crashers land in fuzz/artifacts/<target>/.
#   cargo install cargo-fuzz; fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(decode_transform tokenizer checkpoint)
export RUSTC_BOOTSTRAP=1 LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
# The fuzz binaries link libtorch (the library depends on tch) without the extension's rpath.
LD_LIBRARY_PATH="$(python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  cargo fuzz run --sanitizer none -O "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 2>&1 \
    | tee "fuzz/work/$t.log" | grep -E "^(Done|stat::|INFO: seed|==|SUMMARY)" || true
done
