#!/usr/bin/env bash
# `make run`: embed_service and search_service side by side; Ctrl-C stops both cleanly.
set -euo pipefail
PY="${PY:-.venv/bin/python}"
export EMBED_ADDR="${EMBED_ADDR:-127.0.0.1:50051}"
export EMBED_TARGET="${EMBED_TARGET:-$EMBED_ADDR}"
export SEARCH_ADDR="${SEARCH_ADDR:-127.0.0.1:50052}"

"$PY" -m embed_service &
embed=$!
"$PY" -m search_service &
search=$!

stop() {
  trap - INT TERM
  echo "stopping search_service and embed_service..." >&2
  kill -TERM "$search" "$embed" 2>/dev/null || true
  wait "$search" "$embed" 2>/dev/null || true
}
trap stop INT TERM

echo "embed_service:  $EMBED_ADDR" >&2
echo "search_service: $SEARCH_ADDR  (try: .venv/bin/imagesearch stats)" >&2
# Either one exiting (a model that will not load, a port in use) stops the pair.
wait -n "$embed" "$search" || true
stop
