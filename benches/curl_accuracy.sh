#!/usr/bin/env bash
# Accuracy of vantage's per-phase timings against curl's `-w` timers, on the same local
# targets (tests/support servers, via examples/bench_targets), DNS included.
#
# Usage: benches/curl_accuracy.sh [RUNS]        (default 30 runs per tool and target)
#
# To give curl and vantage the same DNS path, everything runs in a private network and
# mount namespace (`unshare --net --mount`, needs root): loopback only, the responder on
# 127.0.0.1:53, and /etc/resolv.conf bind-mounted to point at it. curl resolves through
# glibc (`-4`: A query only), vantage through hickory (`--ipv4`), both from resolv.conf.
# No packet leaves the namespace.
#
# Phases as in issue #2: dns = time_namelookup, connect = time_connect - time_namelookup,
# tls = time_appconnect - time_connect, ttfb = time_starttransfer - time_pretransfer,
# transfer = time_total - time_starttransfer.
set -euo pipefail
RUNS=${1:-30}
cd "$(dirname "$0")/.."
# Where cargo puts the release build (CARGO_TARGET_DIR when set, as on shared machines).
bin="${CARGO_TARGET_DIR:-target}/release"

if [ "${VANTAGE_BENCH_INNER:-}" != 1 ]; then
  command -v curl >/dev/null || { echo "curl is required (apt-get install curl)" >&2; exit 1; }
  cargo build --release --quiet --bin vantage --example bench_targets
  exec unshare --net --mount env VANTAGE_BENCH_INNER=1 "$0" "$@"
fi

tmp=$(mktemp -d)
ip link set lo up
echo "nameserver 127.0.0.1" > "$tmp/resolv.conf"
mount --bind "$tmp/resolv.conf" /etc/resolv.conf

"$bin/examples/bench_targets" --dns-port 53 --ca-out "$tmp/ca.pem" > "$tmp/targets.env" &
targets_pid=$!
trap 'kill $targets_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do grep -q '^NAME=' "$tmp/targets.env" 2>/dev/null && break; sleep 0.05; done
# shellcheck disable=SC1091
source "$tmp/targets.env"

CURL_FORMAT='{"namelookup":%{time_namelookup},"connect":%{time_connect},"appconnect":%{time_appconnect},"pretransfer":%{time_pretransfer},"starttransfer":%{time_starttransfer},"total":%{time_total},"http_version":"%{http_version}"}\n'

echo "machine: $(nproc) vCPU, $(. /etc/os-release && echo "$PRETTY_NAME"), $(curl --version | head -1 | cut -d' ' -f1-2,4-5)"
echo "runs: $RUNS per tool and target, alternating curl and vantage"
for url in "http://$NAME:$HTTP_PORT/bytes/100000" "https://$NAME:$HTTPS_PORT/bytes/100000"; do
  : > "$tmp/curl.jsonl"
  : > "$tmp/vantage.jsonl"
  # One unmeasured warm-up each (page cache, lazy binding).
  curl -4 -s -o /dev/null --cacert "$CA_FILE" "$url"
  "$bin/vantage" check --json --ipv4 --ca-file "$CA_FILE" "$url" > /dev/null
  for _ in $(seq "$RUNS"); do
    curl -4 -s -o /dev/null --cacert "$CA_FILE" -w "$CURL_FORMAT" "$url" >> "$tmp/curl.jsonl"
    "$bin/vantage" check --json --ipv4 --ca-file "$CA_FILE" "$url" | jq -c . >> "$tmp/vantage.jsonl"
  done
  python3 - "$url" "$tmp/curl.jsonl" "$tmp/vantage.jsonl" <<'PY'
import json, statistics, sys
url, curl_path, vantage_path = sys.argv[1:]
curl = [json.loads(l) for l in open(curl_path)]
ours = [json.loads(l) for l in open(vantage_path)]
https = url.startswith("https")
def c_phases(r):
    ms = lambda s: s * 1000.0
    p = {
        "dns": ms(r["namelookup"]),
        "connect": ms(r["connect"] - r["namelookup"]),
        "ttfb": ms(r["starttransfer"] - r["pretransfer"]),
        "transfer": ms(r["total"] - r["starttransfer"]),
        "total": ms(r["total"]),
    }
    if https:
        p["tls"] = ms(r["appconnect"] - r["connect"])
    return p
def v_phases(r):
    assert r["status"] == "up", r
    p = {k: r[k + "_ms"] for k in ("dns", "connect", "ttfb", "transfer", "total")}
    if https:
        p["tls"] = r["tls_ms"]
    return p
cp = [c_phases(r) for r in curl]
vp = [v_phases(r) for r in ours]
print(f"\n{url}  (curl HTTP/{curl[0]['http_version']}, vantage {ours[0]['http_version']} {ours[0]['tls_version'] or ''})")
print("| phase | curl median ms | vantage median ms | difference ms |")
print("|---|---:|---:|---:|")
for k in ("dns", "connect", "tls", "ttfb", "transfer", "total"):
    if k not in cp[0]:
        continue
    c = statistics.median(x[k] for x in cp)
    v = statistics.median(x[k] for x in vp)
    print(f"| {k} | {c:.3f} | {v:.3f} | {v - c:+.3f} |")
if https:
    # On loopback a TLS 1.3 handshake's network part is one round trip, which the TCP
    # handshake (also one round trip) measures; the rest is computation.
    excess = statistics.median(x["tls"] - x["connect"] for x in vp)
    print(f"vantage tls_ms - connect_ms (handshake time above one round trip), median: {excess:.3f} ms")
PY
done
