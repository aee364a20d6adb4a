#!/usr/bin/env bash
# Side-by-side benchmarks of domsync against etcd and Redis on this machine (see
# benches/compare/README.md). Installs etcd and Redis from Debian when missing, builds the
# domsync release binaries (unless --bin-dir DIR is given) and the comparison tool, then runs
# it; every other option goes to the tool (`--quick`, `--secs N`, `--json`, `--only ...`,
# `--perf`, `--help`). Writes BENCHMARKS.md and benches/compare/plot.png at the repository root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)        # etcd-client's build (tonic)
command -v fincore >/dev/null || need+=(util-linux-extra)         # page-cache state of the resync file
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)  # the plot
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "compare.sh: installing ${need[*]}" >&2
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${need[@]}"
fi

bin_given=no
for a in "$@"; do
    case "$a" in --bin-dir|--bin-dir=*) bin_given=yes ;; esac
done
if [ "$bin_given" = no ]; then
    (cd "$root" && cargo build --release --bins)
fi
(cd "$root/benches/compare" && cargo build --release)

exec "$root/benches/compare/target/release/domsync-compare" --repo "$root" \
    --invocation "benches/compare.sh${*:+ $*}" "$@"
