-- report.lua is wrk's done() hook for the benchmark program (bench/, which
-- embeds it): one line of exact numbers (latencies in ms, never wrk's
-- rounded, unit-changing display), so the program need not parse wrk's
-- human output.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH rps=%.1f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f requests=%d bytes=%d socket_errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status))
end
