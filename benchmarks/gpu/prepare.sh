#!/usr/bin/env bash
# Prepare the one-call GPU check (run here, where pip reaches the package index):
#   bash benchmarks/gpu/prepare.sh [DATA_DIR]
# Downloads (or builds) the wheels of benchmarks/gpu/wheels.txt (pure Python) into .whl/
# and copies the real PneumoniaMNIST (DATA_DIR, default ../shared/data) into .whl/data/.
# .whl/ is ignored by git and travels with the working tree: name it in the device call's
# `carry`. Fails if the folder would exceed the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
data_dir="${1:-../shared/data}"
out="${MEDMAE_WHEEL_DIR:-.whl}"  # the tests point it elsewhere
mkdir -p "$out/data"
grep -v '^\s*#' benchmarks/gpu/wheels.txt | grep -v '^\s*$' | while read -r pin; do
  if ! ls "$out"/"$(echo "${pin%%==*}" | tr '-' '_')"-"${pin##*==}"-*.whl >/dev/null 2>&1; then
    # `pip wheel` takes the published wheel, or builds one from the sdist (antlr4 4.9.3 has none)
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$out" "$pin" 2>/dev/null \
      || { echo "error: could not download or build $pin; pip's message:" >&2
           python3 -m pip wheel --no-deps --wheel-dir "$out" "$pin" >&2; exit 1; }
  fi
done
if [ ! -f "$data_dir/pneumoniamnist.npz" ]; then
  echo "error: $data_dir/pneumoniamnist.npz not found; pass the folder that holds it" >&2
  exit 1
fi
cp "$data_dir/pneumoniamnist.npz" "$out/data/"
size_kib=$(du -sk --apparent-size "$out" | cut -f1)
if [ "$size_kib" -gt $((64 * 1024)) ]; then
  echo "error: $out is ${size_kib} KiB, over the 64 MiB a device call carries" >&2
  exit 1
fi
echo "prepared $out: $(ls "$out"/*.whl | wc -l) wheels + pneumoniamnist.npz, ${size_kib} KiB"
