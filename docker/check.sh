#!/usr/bin/env bash
# Build the CPU image's steps (docker/Dockerfile.cpu) and run the result against a local
# OpenSearch, on a machine where no container registry is reachable: a Debian 12 root
# made by debootstrap is the base, buildah builds with --isolation chroot, and the built
# root filesystem is run with chroot (podman's run needs more than a sandbox allows).
#
#   bash docker/check.sh [OPENSEARCH_URL]        (default http://127.0.0.1:9250)
#
# Needs root, buildah and debootstrap (apt-get install buildah debootstrap), a Debian
# mirror and PyPI. Shows a reranked search served from the image. Not part of CI.
#   WORK=/tmp/es-rerank-image-check  where the base root and buildah's storage live
#   MODEL=demo/model                 the model directory mounted at /models/model
#   KEEP=1                           keep the built image and the mounted container
set -euo pipefail
cd "$(dirname "$0")/.."

OPENSEARCH_URL="${1:-http://127.0.0.1:9250}"
WORK="${WORK:-/tmp/es-rerank-image-check}"
MODEL="${MODEL:-demo/model}"
PORT="${PORT:-8077}"
INDEX="scifact-image-check"
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run")
say() { printf '\n[check.sh] %s\n' "$*"; }

for tool in buildah debootstrap curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install buildah debootstrap curl)"; exit 1; }
done
curl -fs "$OPENSEARCH_URL" >/dev/null || { echo "no OpenSearch at $OPENSEARCH_URL"; exit 1; }
mkdir -p "$WORK"

# 1. A Debian 12 base: what debian:bookworm-slim would be, made here.
if ! "${BUILDAH[@]}" images --quiet localhost/debian-bookworm-base >/dev/null 2>&1; then
  if [ ! -x "$WORK/rootfs/usr/bin/apt-get" ]; then
    say "debootstrap: a minimal Debian 12 root in $WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  fi
  # This machine's own trust (an intercepting proxy's CA, if any) goes into the stand-in
  # base, as a registry-pulled base would have it from its network: apt's ca-certificates
  # picks up /usr/local/share/ca-certificates, pip is told to use the system bundle.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$WORK/rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$WORK/rootfs/etc/pip.conf"
  fi
  say "importing it as localhost/debian-bookworm-base"
  tar -C "$WORK/rootfs" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -cf "$WORK/rootfs.tar" .
  base=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$base" "$WORK/rootfs.tar" /
  "${BUILDAH[@]}" commit --quiet "$base" localhost/debian-bookworm-base >/dev/null
  "${BUILDAH[@]}" rm "$base" >/dev/null
fi

# 2. The CPU image, built from docker/Dockerfile.cpu with that base (SKIP_BUILD=1: the last one).
if [ -n "${SKIP_BUILD:-}" ] && "${BUILDAH[@]}" images --quiet localhost/es-rerank:cpu >/dev/null 2>&1; then
  say "SKIP_BUILD: using the localhost/es-rerank:cpu built before"
else
say "buildah build --isolation chroot -f docker/Dockerfile.cpu (BASE=localhost/debian-bookworm-base)"
"${BUILDAH[@]}" build --isolation chroot --format docker --layers=false --build-arg BASE=localhost/debian-bookworm-base \
  -f docker/Dockerfile.cpu -t localhost/es-rerank:cpu . 2>&1 | grep -vE '^(Copying blob|Writing manifest|Storing signatures|Getting image)' | tail -25
fi
"${BUILDAH[@]}" images localhost/es-rerank:cpu

# 3. Run it: the image's root filesystem, the model mounted as the volume, its own config.
ctr=$("${BUILDAH[@]}" from localhost/es-rerank:cpu)
root=$("${BUILDAH[@]}" mount "$ctr")
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  umount "$root/models/model" 2>/dev/null || true
  umount "$root/proc" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true; "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
mkdir -p "$root/models/model" "$root/data" "$root/proc"
mount --bind "$(realpath "$MODEL")" "$root/models/model" 2>/dev/null || cp -r "$MODEL"/. "$root/models/model/"
mount -t proc proc "$root/proc" 2>/dev/null || true
cp demo/scifact/corpus.jsonl.gz "$root/data/"
# The image's default config, for this index, with a window and a timeout a shared 2-core
# machine meets (the default's 5 s is for a GPU or a dedicated CPU).
sed -e "s#pattern: \"scifact\*\"#pattern: \"$INDEX\"#" -e "s#rerank_timeout: 5#rerank_timeout: 60#" \
  -e "s#window: 50#window: 20#" docker/es-rerank.yaml >"$root/etc/es-rerank/check.yaml"
run_in_image() {  # as the image's USER, with its environment
  exec chroot --userspec=nobody:nogroup "$root" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/tmp \
    PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ES_RERANK_UPSTREAM_URL="$OPENSEARCH_URL" "$@"
}

say "the one-shot indexing job: es-rerank index (SciFact) from the image into $OPENSEARCH_URL/$INDEX"
(run_in_image es-rerank index --config /etc/es-rerank/check.yaml --index "$INDEX" \
  --corpus /data/corpus.jsonl.gz --mapping /app/mappings/scifact.json --recreate)

say "es-rerank serve from the image on 127.0.0.1:$PORT"
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then echo "port $PORT is taken (PORT=... for another)"; exit 1; fi
run_in_image es-rerank serve --config /etc/es-rerank/check.yaml --host 127.0.0.1 --port "$PORT" >"$WORK/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$PORT/_rerank/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
grep -E "loaded|ready|serving|CUDA" "$WORK/serve.log" | head -5 || true
echo "health: $(curl -fs "http://127.0.0.1:$PORT/_rerank/health")"

say "a search direct to OpenSearch and through es-rerank (from the image)"
body='{"query":{"match":{"text":"vitamin D deficiency and bone density"}},"size":5,"_source":["title"]}'
echo "direct:"
curl -fs "$OPENSEARCH_URL/$INDEX/_search" -H 'content-type: application/json' -d "$body" \
  | python3 -c 'import json,sys; [print("  ", h["_id"], round(h["_score"], 3), h["_source"]["title"][:70]) for h in json.load(sys.stdin)["hits"]["hits"]]'
echo "through es-rerank:"
curl -fsS -D "$WORK/headers.txt" "http://127.0.0.1:$PORT/$INDEX/_search" -H 'content-type: application/json' -d "$body" \
  | python3 -c 'import json,sys; [print("  ", h["_id"], round(h["_score"], 3), h["_source"]["title"][:70]) for h in json.load(sys.stdin)["hits"]["hits"]]'
grep -iE '^x-rerank(|-reason|-model|-provider|-window|-total-ms):' "$WORK/headers.txt"
grep -qi '^x-rerank: reranked' "$WORK/headers.txt" && say "OK: a reranked search served from the CPU image"
