#!/usr/bin/env bash
# Load benchmark of the movies server on this machine (issues 4 and 8):
#
#   1. steady state: hit throughput and p99 of /movies/ against the stack's
#      floor (bench/floor: echo on net/http writing movies' own responses
#      from memory) and against nginx serving the very same bytes as static
#      files, per content coding (identity, and each of gzip, br and zstd
#      that movies offers; Accept-Encoding names the one coding), interleaved
#      round by round, medians and both ratios printed;
#   2. expiry churn: -ttl 2s against an upstream answering in 200 ms, next to
#      the same upstream with -ttl 1m, interleaved the same way;
#   3. peak RSS of movies under 256 connections.
#
# It measures, it does not judge: it prints PASS or MISS for each target and
# exits 0 either way (non-zero only if it could not measure). Everything runs
# on 127.0.0.1 and is stopped on exit. With the defaults it takes about six
# minutes. Knobs (environment):
#
#   BENCH_DURATION=10s     each steady-state wrk run (keep it well under the
#                          1m TTL: see the note printed with the table)
#   BENCH_ENCODINGS="identity gzip br"  the steady-state cases, among the
#                          codings movies offers; each adds 3 runs per round
#                          (about 1.5 minutes): add zstd for the fourth. The
#                          bytes of every offered coding are printed anyway.
#   BENCH_CONNECTIONS=64   wrk connections for steady state and churn
#   BENCH_ROUNDS=3         interleaved rounds; the median is reported
#   BENCH_THREADS=2        wrk threads
#   BENCH_CHURN_DURATION=10s (each churn round: five 2s TTLs),
#   BENCH_RSS_DURATION=10s, BENCH_RSS_CONNECTIONS=256
#   BENCH_KEEP=1           keep the work directory (wrk output, logs, nginx.conf)
#
# wrk and nginx come from Debian and are installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${BENCH_DURATION:-10s}
bench_encodings=${BENCH_ENCODINGS:-identity gzip br}
conns=${BENCH_CONNECTIONS:-64}
rounds=${BENCH_ROUNDS:-3}
threads=${BENCH_THREADS:-2}
churn_duration=${BENCH_CHURN_DURATION:-10s}
rss_duration=${BENCH_RSS_DURATION:-10s}
rss_conns=${BENCH_RSS_CONNECTIONS:-256}
warmup=2s
upstream_latency_ms=200
churn_ttl=2s

# Targets, from issues 4 and 8.
min_floor_ratio=0.9 # movies req/s over the floor's req/s (issue 8)
min_ratio=0.8       # movies req/s over nginx req/s (issue 4)
max_churn_ratio=1.5 # churn p99 over steady p99 (and below the upstream latency)
max_rss_mib=40

# --- tools -----------------------------------------------------------------

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v gzip >/dev/null || missing+=(gzip)
if ((${#missing[@]})); then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  echo "bench: installing ${missing[*]} from Debian" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d /tmp/movies-bench.XXXXXX)
chmod 755 "$work" # nginx's workers run as nobody when started by root
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ ${BENCH_KEEP:-} == 1 ]]; then
    echo "bench: work directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench: building ./cmd/movies, ./cmd/ghiblifake and ./bench/floor" >&2
mkdir -p "$work/bin"
go build -o "$work/bin/movies" ./cmd/movies
go build -o "$work/bin/ghiblifake" ./cmd/ghiblifake
go build -o "$work/bin/floor" ./bench/floor

# --- helpers ---------------------------------------------------------------

# free_port prints a port nobody listens on, below the kernel's ephemeral
# range so it cannot collide with wrk's or curl's own connections.
free_port() {
  local p
  for _ in {1..200}; do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "bench: no free port found" >&2
  return 1
}

# wait_http URL PID waits for URL to answer 200 while PID lives.
wait_http() {
  local url=$1 pid=$2
  for _ in {1..100}; do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: the process behind $url exited; its log:" >&2
      cat "$work"/*.log >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "bench: $url did not answer within 10s" >&2
  return 1
}

# start_movies NAME FLAG... starts movies; sets movies_pid and movies_url.
start_movies() {
  local name=$1 port
  shift
  port=$(free_port)
  "$work/bin/movies" -addr "127.0.0.1:$port" -log-level warn "$@" >"$work/movies-$name.log" 2>&1 &
  movies_pid=$!
  pids+=("$movies_pid")
  movies_url="http://127.0.0.1:$port"
  wait_http "$movies_url/healthz" "$movies_pid"
  # The first request pays for the first fetch; no wrk run should.
  curl -fsS -o /dev/null "$movies_url/movies/"
}

# stop PID ends one of our processes and forgets it, so cleanup cannot hit
# a recycled pid.
stop() {
  local keep=() pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    [[ $pid == "$1" ]] || keep+=("$pid")
  done
  pids=("${keep[@]}")
}

# bench_run LABEL CONNS DURATION URL [WRK FLAG...] runs wrk and prints the
# report line of bench/report.lua; wrk's own output is kept in the work dir.
bench_run() {
  local label=$1 c=$2 d=$3 url=$4
  shift 4
  wrk -t"$threads" -c"$c" -d"$d" --latency -s bench/report.lua "$@" "$url" >"$work/wrk-$label.txt" 2>&1 || {
    echo "bench: wrk failed:" >&2
    cat "$work/wrk-$label.txt" >&2
    return 1
  }
  grep '^BENCH ' "$work/wrk-$label.txt"
}

# field NAME LINE prints NAME's value from a report line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

median() { sort -g "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# metric NAME FILE sums every series of NAME in a /metrics scrape; "" if absent.
metric() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; found = 1 } END { if (found) printf "%.0f", s }' "$2"; }

delta() {
  local before after
  before=$(metric "$1" "$2")
  after=$(metric "$1" "$3")
  if [[ -z $after ]]; then echo "absent"; else echo $((after - ${before:-0})); fi
}

vmhwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# verdict OK prints PASS or MISS.
verdict() { if [[ $1 == 1 ]]; then echo PASS; else echo MISS; fi; }

fmt_ms() { printf '%.2f ms' "$1"; }

# --- the machine -------------------------------------------------------------

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- cmd pkg metrics bench go.mod go.sum 2>/dev/null || commit+=" + uncommitted changes"
echo "# movies load benchmark"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "- $(go version), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
echo "- movies at $commit; wrk -t$threads, load generator on the same machine"

# --- 1. steady state against the floor and nginx ----------------------------

start_movies steady -upstream builtin
steady_pid=$movies_pid
steady_base=$movies_url
steady_url=$steady_base/movies/

header() { tr -d '\r' <"$2" | awk -v h="$1" 'tolower($1) == tolower(h) ":" { $1 = ""; sub(/^ /, ""); print; exit }'; }
size() { wc -c <"$1" | tr -d ' '; }

# The product's own responses, one per content coding it offers, as the
# floor and nginx will serve them: identity, and each coding movies answers
# in when asked for it alone (the Accept-Encoding wrk will send).
resp=$work/responses
mkdir -p "$resp"
curl -fsS -D "$resp/identity.headers" -o "$resp/identity.body" "$steady_url"
encodings=(identity)
for enc in gzip br zstd; do
  curl -fsS -D "$resp/$enc.headers" -o "$resp/$enc.body" -H "Accept-Encoding: $enc" "$steady_url"
  if [[ $(header Content-Encoding "$resp/$enc.headers") == "$enc" ]]; then
    encodings+=("$enc")
  else
    rm "$resp/$enc.headers" "$resp/$enc.body"
  fi
done
# Every coding must come from the same snapshot: the ETags share its hash.
etag_hash() { header ETag "$1" | sed 's/^W\///; s/"//g; s/-[a-z]*$//'; }
for enc in "${encodings[@]}"; do
  if [[ $(etag_hash "$resp/$enc.headers") != $(etag_hash "$resp/identity.headers") ]]; then
    echo "bench: the $enc response is from another snapshot than identity's (a refresh between the fetches?); run again" >&2
    exit 1
  fi
done
if [[ -f $resp/gzip.body ]] && ! gzip -dc "$resp/gzip.body" | cmp -s - "$resp/identity.body"; then
  echo "bench: movies' gzip body does not decompress to its identity body" >&2
  exit 1
fi
# wanted: the codings to load-test (BENCH_ENCODINGS), among those offered.
cases=()
for enc in $bench_encodings; do
  [[ -f $resp/$enc.body ]] && cases+=("$enc")
done

# The floor: echo on net/http writing those very responses from memory.
floor_port=$(free_port)
"$work/bin/floor" -addr "127.0.0.1:$floor_port" -dir "$resp" >"$work/floor.log" 2>&1 &
floor_pid=$!
pids+=("$floor_pid")
floor_url=http://127.0.0.1:$floor_port/movies/
wait_http "$floor_url" "$floor_pid"

# nginx: the same bytes as static files, gzip through gzip_static, br and
# zstd (which nginx-light cannot negotiate) by the exact Accept-Encoding
# value wrk sends. The extra headers movies sends are copied in, so neither
# answer is cheaper for being shorter; the ones nginx makes itself are
# left to it.
root=$work/www
mkdir -p "$root/movies"
cp "$resp/identity.body" "$root/movies/index.html"
declare -A nginx_suffix=([gzip]=.gz [br]=.br [zstd]=.zst)
for enc in "${encodings[@]:1}"; do
  cp "$resp/$enc.body" "$root/movies/index.html${nginx_suffix[$enc]}"
done
chmod -R a+rX "$root"
add_headers=""
while IFS= read -r line; do
  line=${line%$'\r'}
  name=${line%%:*}
  value=${line#*: }
  [[ $line == *:* && $name != HTTP/* ]] || continue
  case ${name,,} in
    date | content-length | content-type | last-modified | etag | content-encoding | vary | server | connection | keep-alive | transfer-encoding | accept-ranges) continue ;;
  esac
  [[ $value == *[\"\$\\]* ]] && continue
  add_headers+="            add_header $name \"$value\" always;"$'\n'
done <"$resp/identity.headers"

nginx_port=$(free_port)
mkdir -p "$work/nginx"
conf=$(<bench/nginx.conf.tmpl)
conf=${conf//@PREFIX@/$work/nginx}
conf=${conf//@ROOT@/$root}
conf=${conf//@PORT@/$nginx_port}
conf=${conf//@HEADERS@/${add_headers%$'\n'}}
printf '%s\n' "$conf" >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" -g 'daemon off;' >"$work/nginx.log" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
nginx_url=http://127.0.0.1:$nginx_port/movies/
wait_http "$nginx_url" "$nginx_pid"

# All three must serve the very same bytes, or the comparison means nothing.
declare -A url_of=([movies]=$steady_url [floor]=$floor_url [nginx]=$nginx_url)
targets=(movies floor nginx)
for enc in "${encodings[@]}"; do
  ae=()
  [[ $enc == identity ]] || ae=(-H "Accept-Encoding: $enc")
  for target in floor nginx; do
    curl -fsS -D "$work/$target-$enc.headers" -o "$work/$target-$enc.body" "${ae[@]}" "${url_of[$target]}"
    got=$(header Content-Encoding "$work/$target-$enc.headers")
    if ! cmp -s "$work/$target-$enc.body" "$resp/$enc.body" || [[ $got != "$(header Content-Encoding "$resp/$enc.headers")" ]]; then
      echo "bench: $target does not serve the same $enc bytes as movies; see $work (kept)" >&2
      BENCH_KEEP=1
      exit 1
    fi
  done
done

echo
echo "## Steady state: movies vs the floor vs nginx, on the same bytes"
echo
printf -- '- /movies/ body per encoding, as movies sends it (and the floor and nginx):'
for enc in "${encodings[@]}"; do
  printf ' %s %s B;' "$enc" "$(size "$resp/$enc.body")"
done
echo
echo "- response head, identity: movies $(size "$resp/identity.headers") B, floor $(size "$work/floor-identity.headers") B, nginx $(size "$work/nginx-identity.headers") B"
echo "- movies -upstream builtin -ttl 1m (GOMAXPROCS $(nproc)); floor: echo v4 on net/http writing movies' responses from memory (bench/floor), same server settings; nginx worker_processes auto ($(nproc)), sendfile, gzip_static, open_file_cache, keep-alive unlimited"
echo "- wrk -t$threads -c$conns -d$duration --latency, $rounds interleaved rounds (each case: movies, floor, nginx, with movies and the floor swapped in even rounds; Accept-Encoding: the case's coding alone), after a $warmup warm-up of each"
echo

ae_for() { [[ $1 == identity ]] || printf '%s\n' -H "Accept-Encoding: $1"; }
for enc in "${cases[@]}"; do
  mapfile -t extra < <(ae_for "$enc")
  for target in "${targets[@]}"; do
    bench_run "warmup-$target-$enc" "$conns" "$warmup" "${url_of[$target]}" "${extra[@]}" >/dev/null
  done
done
curl -fsS -o "$work/steady-before.metrics" "$steady_base/metrics"
mkdir -p "$work/res"
for ((r = 1; r <= rounds; r++)); do
  # movies and the floor swap places every other round, so that a machine
  # getting busier or quieter during a round favours neither.
  order=("${targets[@]}")
  ((r % 2)) || order=(floor movies nginx)
  for enc in "${cases[@]}"; do
    mapfile -t extra < <(ae_for "$enc")
    for target in "${order[@]}"; do
      # A round is longer than the TTL: movies' snapshot expires while the
      # others take their turns. One request first, so wrk measures hits,
      # not that idle-made miss (steady traffic refreshes ahead instead).
      [[ $target == movies ]] && curl -fsS -o /dev/null "$steady_url"
      line=$(bench_run "$target-$enc-$r" "$conns" "$duration" "${url_of[$target]}" "${extra[@]}")
      rps=$(field rps "$line") p99=$(field p99_ms "$line") reqs=$(field requests "$line")
      echo "$rps" >>"$work/res/$target-$enc.rps"
      echo "$p99" >>"$work/res/$target-$enc.p99"
      printf -- '- round %d %-8s %-6s %9.0f req/s  p99 %7.2f ms  max %7.2f ms  %6.0f B/response  errors %s, non-2xx %s\n' \
        "$r" "$enc" "$target" "$rps" "$p99" "$(field max_ms "$line")" "$(awk -v b="$(field bytes "$line")" -v n="$reqs" 'BEGIN { print (n ? b / n : 0) }')" \
        "$(field socket_errors "$line")" "$(field non2xx "$line")"
    done
  done
done
curl -fsS -o "$work/steady-after.metrics" "$steady_base/metrics"
steady_hwm=$(vmhwm_kib "$steady_pid")
nginx_hwm=""
for pid in "$nginx_pid" $(pgrep -P "$nginx_pid" || true); do
  nginx_hwm+="$(vmhwm_kib "$pid") "
done
stop "$nginx_pid"
stop "$floor_pid"
stop "$steady_pid"

# round_ratios A B prints, one a line, each round's A req/s over B's.
round_ratios() { paste "$work/res/$1.rps" "$work/res/$2.rps" | awk '{ printf "%.4f\n", ($2 ? $1 / $2 : 0) }'; }
median_ratio() { round_ratios "$1" "$2" >"$work/res/ratio" && printf '%.2f' "$(median "$work/res/ratio")"; }
echo
echo "| case | body | movies req/s | floor req/s | nginx req/s | movies/floor (target >= ${min_floor_ratio}x) | rounds | movies/nginx | movies p99 | floor p99 | nginx p99 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
declare -A floor_ratio_of nginx_ratio_of
for enc in "${cases[@]}"; do
  m_rps=$(median "$work/res/movies-$enc.rps") f_rps=$(median "$work/res/floor-$enc.rps") n_rps=$(median "$work/res/nginx-$enc.rps")
  # A ratio is the median of the rounds' ratios, each from runs seconds
  # apart, rather than a ratio of medians that may come from different
  # rounds, when the machine was busier or quieter; the rounds' spread is
  # the noise.
  floor_ratio_of[$enc]=$(median_ratio "movies-$enc" "floor-$enc")
  nginx_ratio_of[$enc]=$(median_ratio "movies-$enc" "nginx-$enc")
  per_round=$(round_ratios "movies-$enc" "floor-$enc" | awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), $1 }')
  printf '| %s | %s B | %.0f | %.0f | %.0f | %sx | %s | %sx | %s | %s | %s |\n' "$enc" "$(size "$resp/$enc.body")" "$m_rps" "$f_rps" "$n_rps" \
    "${floor_ratio_of[$enc]}" "$per_round" "${nginx_ratio_of[$enc]}" \
    "$(fmt_ms "$(median "$work/res/movies-$enc.p99")")" "$(fmt_ms "$(median "$work/res/floor-$enc.p99")")" "$(fmt_ms "$(median "$work/res/nginx-$enc.p99")")"
done
echo
echo "req/s and p99: medians of $rounds rounds; ratios: medians of the rounds' ratios (movies and the floor swap order every other round). During these runs (1m TTL) movies loaded $(delta movies_cache_loads_total "$work/steady-before.metrics" "$work/steady-after.metrics") new snapshot(s): cache misses $(delta movies_cache_misses_total "$work/steady-before.metrics" "$work/steady-after.metrics"), hits $(delta movies_cache_hits_total "$work/steady-before.metrics" "$work/steady-after.metrics"), early refreshes $(delta movies_cache_early_refreshes_total "$work/steady-before.metrics" "$work/steady-after.metrics") (each movies run starts with one request, so a snapshot that expired while the others ran is reloaded before wrk starts; within a run, loads start ahead of expiry)."

# --- 2. expiry churn -----------------------------------------------------------

"$work/bin/ghiblifake" -addr 127.0.0.1:0 -latency "${upstream_latency_ms}ms" >"$work/ghiblifake.log" 2>&1 &
fake_pid=$!
pids+=("$fake_pid")
fake_url=""
for _ in {1..100}; do
  fake_url=$(sed -n 's/^listening on //p' "$work/ghiblifake.log")
  [[ -n $fake_url ]] && break
  kill -0 "$fake_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $fake_url ]]; then
  echo "bench: ghiblifake did not start:" >&2
  cat "$work/ghiblifake.log" >&2
  exit 1
fi

# Both movies run side by side, the steady one with -ttl 1m and the churning
# one with -ttl 2s, and take turns under wrk, round by round, so that a
# change in the machine's load hits both alike. Each turn starts with one
# request: after idling through the other's turn the churning snapshot has
# expired, and wrk should measure churn under load, not that cold start.
declare -A slow_url slow_pid
for name in slow-steady churn; do
  ttl=1m
  [[ $name == churn ]] && ttl=$churn_ttl
  start_movies "$name" -upstream "$fake_url" -ttl "$ttl" -upstream-timeout 1s
  slow_url[$name]=$movies_url
  slow_pid[$name]=$movies_pid
  bench_run "warmup-$name" "$conns" "$warmup" "$movies_url/movies/" >/dev/null
done
echo
echo "## Expiry churn: upstream answering in ${upstream_latency_ms} ms (ghiblifake)"
echo
echo "wrk -t$threads -c$conns -d$churn_duration --latency, identity, $rounds interleaved rounds after a $warmup warm-up of each; medians of the rounds below, max of their maxima."
echo
for ((r = 1; r <= rounds; r++)); do
  for name in slow-steady churn; do
    url=${slow_url[$name]}
    curl -fsS -o /dev/null "$url/movies/"
    curl -fsS -o "$work/$name-$r-before.metrics" "$url/metrics"
    line=$(bench_run "$name-$r" "$conns" "$churn_duration" "$url/movies/")
    curl -fsS -o "$work/$name-$r-after.metrics" "$url/metrics"
    for f in rps p50_ms p99_ms max_ms non2xx; do
      field "$f" "$line" >>"$work/res/$name.$f"
    done
    printf -- '- round %d %-11s %9.0f req/s  p99 %7.2f ms  max %7.2f ms\n' "$r" "$name" "$(field rps "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")"
  done
done
for name in slow-steady churn; do
  stop "${slow_pid[$name]}"
done

# sum_delta NAME RUN adds up NAME's deltas over RUN's rounds.
sum_delta() {
  local total=0 d
  for ((r = 1; r <= rounds; r++)); do
    d=$(delta "$1" "$work/$2-$r-before.metrics" "$work/$2-$r-after.metrics")
    [[ $d == absent ]] && { echo absent; return; }
    total=$((total + d))
  done
  echo "$total"
}
cache_deltas() {
  echo "cache misses $(sum_delta movies_cache_misses_total "$1"), hits $(sum_delta movies_cache_hits_total "$1"), loads $(sum_delta movies_cache_loads_total "$1"), early refreshes $(sum_delta movies_cache_early_refreshes_total "$1"), non-2xx answers $(awk '{ s += $1 } END { print s + 0 }' "$work/res/$1.non2xx")"
}
max_of() { sort -g "$1" | tail -1; }

s_p99=$(median "$work/res/slow-steady.p99_ms")
c_p99=$(median "$work/res/churn.p99_ms")
churn_ratio=$(awk -v c="$c_p99" -v s="$s_p99" 'BEGIN { printf "%.2f", (s ? c / s : 0) }')
echo
echo "| run | req/s | p50 | p99 | max |"
echo "|---|---|---|---|---|"
for name in slow-steady churn; do
  label="steady, -ttl 1m"
  [[ $name == churn ]] && label="churn, -ttl $churn_ttl"
  printf '| %s | %.0f | %s | %s | %s |\n' "$label" "$(median "$work/res/$name.rps")" "$(fmt_ms "$(median "$work/res/$name.p50_ms")")" \
    "$(fmt_ms "$(median "$work/res/$name.p99_ms")")" "$(fmt_ms "$(max_of "$work/res/$name.max_ms")")"
done
echo
echo "- churn p99 / steady p99 = ${churn_ratio}x"
echo "- steady runs: $(cache_deltas slow-steady)"
echo "- churn runs: $(cache_deltas churn); movies_upstream_requests_total (a load still in flight when a run ended shows in loads, not here):"
for ((r = 1; r <= rounds; r++)); do
  awk 'FNR == NR { if (/^movies_upstream_requests_total/) before[$1] = $2; next }
    /^movies_upstream_requests_total/ { print $1, $2 - before[$1] }' \
    "$work/churn-$r-before.metrics" "$work/churn-$r-after.metrics"
done | awk '{ s[$1] += $2 } END { for (k in s) printf "  - %s %.0f\n", k, s[k] }' | sort

# --- 3. peak RSS -------------------------------------------------------------

# An upstream in another process, so the figure is movies alone (-upstream
# builtin would add the fake's data and server to it).
start_movies rss -upstream "$fake_url" -ttl 1m -upstream-timeout 1s
line=$(bench_run rss "$rss_conns" "$rss_duration" "$movies_url/movies/")
rss_hwm=$(vmhwm_kib "$movies_pid")
stop "$movies_pid"
stop "$fake_pid"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
echo
echo "## Peak RSS"
echo
echo "- movies, wrk -t$threads -c$rss_conns -d$rss_duration identity ($(printf '%.0f' "$(field rps "$line")") req/s, p99 $(fmt_ms "$(field p99_ms "$line")")): VmHWM $(mib "$rss_hwm")"
echo "- for reference: the steady-state movies (-upstream builtin, so with the fake upstream in-process, after all its runs): VmHWM $(mib "$steady_hwm"); nginx master and workers: $(for k in $nginx_hwm; do printf '%s, ' "$(mib "$k")"; done | sed 's/, $//')"

# --- targets -------------------------------------------------------------------

ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? 1 : 0 }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 < b + 0) ? 1 : 0 }'; }
echo
echo "## Targets"
echo
for enc in "${cases[@]}"; do
  echo "- $(verdict "$(ge "${floor_ratio_of[$enc]}" "$min_floor_ratio")") hit throughput, $enc: ${floor_ratio_of[$enc]}x the floor (target >= ${min_floor_ratio}x)"
done
for enc in "${cases[@]}"; do
  echo "- $(verdict "$(ge "${nginx_ratio_of[$enc]}" "$min_ratio")") hit throughput, $enc: ${nginx_ratio_of[$enc]}x nginx (target >= ${min_ratio}x)"
done
echo "- $(verdict "$(awk -v r="$churn_ratio" -v m="$max_churn_ratio" 'BEGIN { print (r + 0 <= m + 0) }')") expiry churn p99 within ${max_churn_ratio}x of steady: ${churn_ratio}x"
echo "- $(verdict "$(lt "$c_p99" "$upstream_latency_ms")") expiry churn p99 below the upstream latency: $(fmt_ms "$c_p99") (target < ${upstream_latency_ms} ms)"
echo "- $(verdict "$(lt "$rss_hwm" $((max_rss_mib * 1024)))") peak RSS at $rss_conns connections: $(mib "$rss_hwm") (target < $max_rss_mib MiB)"
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: anything else running skews both sides of each comparison, not always equally)."
