#!/usr/bin/env bash
# `make run`: embed_service, search_service and the web gallery side by side; Ctrl-C
# stops them all. The gallery's Index button indexes WEB_ROOT (default: DIR, else an empty
# DATA_DIR/pictures).
# EMBED_REPLICAS=N starts N embed_service replicas on consecutive ports from EMBED_ADDR's
# and points search_service at all of them (unless EMBED_TARGET says otherwise).
set -euo pipefail
PY="${PY:-.venv/bin/python}"
replicas="${EMBED_REPLICAS:-1}"
if [ "$replicas" -gt 1 ]; then
  default_embed="127.0.0.1:50061"  # clear of search_service's 50052
else
  default_embed="127.0.0.1:50051"
fi
export EMBED_ADDR="${EMBED_ADDR:-$default_embed}"
export SEARCH_ADDR="${SEARCH_ADDR:-127.0.0.1:50052}"
export WEB_ADDR="${WEB_ADDR:-127.0.0.1:8080}"
web_root="${WEB_ROOT:-${DIR:-}}"
if [ -z "$web_root" ]; then
  # Never the checkout itself: an empty folder beside the store until DIR names one.
  web_root="${DATA_DIR:-.imagesearch}/pictures"
  mkdir -p "$web_root"
fi
host="${EMBED_ADDR%:*}"
port="${EMBED_ADDR##*:}"
search_port="${SEARCH_ADDR##*:}"
if [ "$search_port" -ge "$port" ] && [ "$search_port" -lt $((port + replicas)) ]; then
  echo "EMBED_REPLICAS=$replicas takes ports $port-$((port + replicas - 1)) from EMBED_ADDR," \
    "which include SEARCH_ADDR's $search_port; set EMBED_ADDR to another port" >&2
  exit 2
fi

pids=()
addresses=()
for ((i = 0; i < replicas; i++)); do
  address="$host:$((port + i))"
  metrics=""
  if [ -n "${EMBED_METRICS_ADDR:-}" ]; then
    metrics="${EMBED_METRICS_ADDR%:*}:$((${EMBED_METRICS_ADDR##*:} + i))"
  fi
  EMBED_ADDR="$address" EMBED_METRICS_ADDR="$metrics" "$PY" -m embed_service &
  pids+=("$!")
  addresses+=("$address")
done
if [ "$replicas" -gt 1 ]; then
  export EMBED_TARGET="${EMBED_TARGET:-ipv4:$(IFS=,; echo "${addresses[*]}")}"
else
  export EMBED_TARGET="${EMBED_TARGET:-$EMBED_ADDR}"
fi
"$PY" -m search_service &
search=$!
"$PY" -m imagesearch_client.web --root "$web_root" --target "$SEARCH_ADDR" &
web=$!

stopping=0
stop() {
  trap - INT TERM
  stopping=1
  echo "stopping the gallery, search_service and embed_service..." >&2
  kill -TERM "$web" "$search" "${pids[@]}" 2>/dev/null || true
  wait "$web" "$search" "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

echo "embed_service:  ${addresses[*]}" >&2
echo "search_service: $SEARCH_ADDR  (try: .venv/bin/imagesearch stats)" >&2
echo "web gallery:    http://$WEB_ADDR/  (Index indexes $web_root; make run DIR=... for yours)" >&2
# Any one exiting (a model that will not load, a port in use) stops them all, and its
# exit status is ours; Ctrl-C (the trap above has stopped them) is a clean stop.
status=0
wait -n "${pids[@]}" "$search" "$web" || status=$?
if [ "$stopping" = 1 ]; then
  exit 0
fi
echo "a service exited (status $status): see its message above" >&2
stop
exit "$status"
