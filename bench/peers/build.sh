#!/bin/bash
# Build the benchmark peer helpers (floor, timeit) with gcc -O2.
# usage: bench/peers/build.sh [OUTDIR]     (default OUTDIR: /tmp/dms-bench-bin)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-/tmp/dms-bench-bin}

if ! command -v gcc >/dev/null 2>&1; then
	echo "build.sh: gcc not found (Debian package: gcc)" >&2
	exit 1
fi
mkdir -p "$out"
for prog in floor timeit; do
	gcc -O2 -Wall -Wextra -o "$out/$prog" "$here/$prog.c"
done
echo "built $out/floor $out/timeit" >&2
