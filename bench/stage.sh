#!/usr/bin/env bash
# `dea stage` of a ~100 MB app directory against `tar -cf - . | pigz -6` on the same tree:
# the whole `dea` process (source copied into the workspace, detect, compile and release by
# the built-in buildpacks, droplet written and synced), end to end, as a user would run it.
# Target: pigz time / dea time >= 1.5, and the droplet at most 2% larger than pigz's output.
#
# The tree is made once (python3, fixed seed): a Procfile app (so the procfile buildpack
# matches) of pseudo-JavaScript files of many sizes (log-normal, 64 B to 1 MiB) in nested
# packages, with ~10% of the bytes in incompressible files. The two commands run alternately,
# ROUNDS times (default 5), after one warm-up each (which also compiles the wasm buildpacks
# into dea's cache); best and median wall time of each are printed, with user+sys CPU time,
# the two output sizes and their ratios. The droplet is then unpacked with `tar xzf` and
# compared with the tree (`diff -r`).
#
# Needs python3, pigz (installed with apt-get when missing and root), and what
# scripts/build-plugins needs for the default buildpacks. Builds `dea` in release mode.
# Usage: bench/stage.sh [size in MB, default 100]   (ROUNDS=3 bench/stage.sh for fewer rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-100}
rounds=${ROUNDS:-5}
target=${CARGO_TARGET_DIR:-target}

if ! command -v pigz >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y pigz >/dev/null || { apt-get update >/dev/null && apt-get install -y pigz >/dev/null; }
    else
        echo "bench/stage.sh needs pigz (apt-get install pigz)" >&2
        exit 1
    fi
fi
for tool in python3 tar diff; do
    command -v "$tool" >/dev/null || { echo "bench/stage.sh needs $tool" >&2; exit 1; }
done

# The default buildpacks are embedded in the binary when built: build them first if missing.
[ -f target/buildpacks/procfile/buildpack.wasm ] || scripts/build-plugins
cargo build --release --quiet -p dea-cli
dea="$target/release/dea"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree="$tmp/app"

python3 - "$tree" "$size_mb" <<'PY'
import os, random, sys
root, total_mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(17)
syll = ["ka", "to", "ri", "mu", "sen", "pla", "dor", "vi", "qu", "ex", "an", "el", "zo", "ba",
        "cre", "fi", "get", "set", "data", "node", "user", "item", "list", "map", "val", "req",
        "res", "conf", "tmp", "buf"]
words = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(1200)})
kw = ["function", "return", "const", "let", "if", "else", "for", "while", "import", "export",
      "class", "new", "this", "await", "async", "true", "false", "null", "try", "catch"]
w = lambda: rng.choice(words)

def line(depth):
    r, ind = rng.random(), "  " * depth
    if r < 0.25: return f"{ind}const {w()}{w().capitalize()} = {w()}.{w()}({w()}, {rng.randint(0, 99)});\n"
    if r < 0.40: return f"{ind}if ({w()} {rng.choice(['===', '!==', '<', '>'])} {w()}) {{\n"
    if r < 0.50: return f"{ind}return {w()}({w()}.{w()});\n"
    if r < 0.60: return f"{ind}// {' '.join(w() for _ in range(rng.randint(3, 12)))}\n"
    if r < 0.70: return f"{ind}{rng.choice(kw)} {w()}{w().capitalize()}({', '.join(w() for _ in range(rng.randint(0, 4)))}) {{\n"
    if r < 0.80: return f"{ind}{w()}.{w()} = \"{' '.join(w() for _ in range(rng.randint(1, 5)))}\";\n"
    if r < 0.90: return f"{ind}}}\n"
    return f"{ind}{w()}[{rng.randint(0, 255)}] = {w()}.{rng.choice(kw)};\n"

def text(size):
    out, n, depth = [], 0, 0
    while n < size:
        piece = line(depth)
        out.append(piece)
        n += len(piece)
        depth = max(0, min(6, depth + rng.choice([-1, 0, 0, 1])))
    return "".join(out).encode()[:size]

target, written, files, binary = total_mb << 20, 0, 0, 0
while written < target:
    d = os.path.join(root, f"pkg{files // 200:03d}", rng.choice(["src", "lib", "test", "assets"]), f"m{files % 7}")
    os.makedirs(d, exist_ok=True)
    size = int(min(1 << 20, max(64, rng.lognormvariate(8.6, 1.4))))
    if binary < written * 0.10:
        data, name = rng.randbytes(size), f"f{files}.woff2"
        binary += size
    else:
        data, name = text(size), f"f{files}.js"
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    written += size
    files += 1
with open(os.path.join(root, "Procfile"), "w") as f:
    f.write("web: python3 -m http.server $PORT\n")
print(f"app: {files} files, {written / 1048576:.1f} MiB ({binary / 1048576:.1f} MiB incompressible)")
PY

# A state directory of the benchmark's own, with the built-in buildpacks installed.
state="$tmp/state"
"$dea" --base-dir "$state" buildpacks install-defaults >/dev/null
droplet="$tmp/droplet.tgz"
pigz_out="$tmp/pigz.tgz"
run_dea() { "$dea" --base-dir "$state" stage "$tree" -o "$droplet" >"$tmp/stage.log"; }
run_pigz() { tar -C "$tree" -cf - . | pigz -6 >"$pigz_out"; }

# "wall user sys" of one run, in seconds.
timed() {
    local TIMEFORMAT='%R %U %S'
    { time "$@" >/dev/null 2>&1; } 2>&1
}

run_dea || { cat "$tmp/stage.log"; echo "dea stage failed" >&2; exit 1; }
run_pigz
dea_times=()
pigz_times=()
for round in $(seq "$rounds"); do
    dea_times+=("$(timed run_dea)")
    pigz_times+=("$(timed run_pigz)")
    echo "round $round: dea ${dea_times[-1]%% *} s, pigz ${pigz_times[-1]%% *} s"
done

# best, median wall and median user+sys of "wall user sys" lines.
summary() {
    printf '%s\n' "$@" | python3 -c '
import sys, statistics
runs = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
walls = sorted(r[0] for r in runs)
cpu = statistics.median(r[1] + r[2] for r in runs)
user = statistics.median(r[1] for r in runs)
sys_ = statistics.median(r[2] for r in runs)
print(f"{walls[0]:.3f} {statistics.median(walls):.3f} {cpu:.3f} {user:.3f} {sys_:.3f}")'
}
read -r dea_best dea_median dea_cpu dea_user dea_sys <<<"$(summary "${dea_times[@]}")"
read -r pigz_best pigz_median pigz_cpu pigz_user pigz_sys <<<"$(summary "${pigz_times[@]}")"
dea_size=$(stat -c %s "$droplet")
pigz_size=$(stat -c %s "$pigz_out")

mkdir "$tmp/check"
tar -xzf "$droplet" -C "$tmp/check" || { echo "tar xzf cannot read the droplet" >&2; exit 1; }
diff -r "$tree" "$tmp/check/app" >/dev/null || { echo "the droplet's app/ differs from the tree" >&2; exit 1; }
[ -f "$tmp/check/staging_info.yml" ] || { echo "the droplet has no staging_info.yml" >&2; exit 1; }

python3 - <<PY
dea_best, dea_median, pigz_best, pigz_median = $dea_best, $dea_median, $pigz_best, $pigz_median
print(f"dea stage ({$rounds} rounds): best {dea_best:.3f} s, median {dea_median:.3f} s, "
      f"median user+sys {$dea_cpu:.3f} s ({$dea_user:.3f} + {$dea_sys:.3f})")
print(f"tar | pigz -6:        best {pigz_best:.3f} s, median {pigz_median:.3f} s, "
      f"median user+sys {$pigz_cpu:.3f} s ({$pigz_user:.3f} + {$pigz_sys:.3f})")
print(f"ratio pigz/dea: best {pigz_best / dea_best:.2f}, median {pigz_median / dea_median:.2f} (target >= 1.5)")
print(f"sizes: droplet {$dea_size} B, pigz {$pigz_size} B, ratio {$dea_size / $pigz_size:.4f} (target <= 1.02)")
print("tar xzf reads the droplet, and its app/ equals the tree: yes")
print(f"bench-result|dea stage 100 MB vs tar+pigz -6 (s, median)|{dea_median:.3f}|{pigz_median:.3f}|{pigz_median / dea_median:.2f}x|>= 1.5x")
print(f"bench-result|droplet size vs pigz's (bytes)|{$dea_size}|{$pigz_size}|{$dea_size / $pigz_size:.4f}|<= 1.02")
PY
