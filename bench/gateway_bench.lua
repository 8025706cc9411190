-- wrk script for bench/gateway_bench.py: every request is a distinct, signed WAHA webhook.
--
--   wrk -t1 -c64 -d8s -s bench/gateway_bench.lua http://127.0.0.1:PORT -- BODIES_FILE FIRST
--
-- BODIES_FILE holds one request per line: `<hex HMAC-SHA512>\t<compact JSON body>` (compact
-- JSON never contains a raw tab or newline). Requests start at line FIRST + 1 so a measured run
-- does not repeat the bodies of the warm-up before it (a repeat would be a cheap "duplicate").
-- `done` prints one JSON line the Python driver parses.

local requests = {}
local position = 0
wrapped = 0

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local signature, body = line:match("^(%x+)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/webhook", {
      ["Content-Type"] = "application/json",
      ["User-Agent"] = "WAHA/2025.11.2",
      ["X-Webhook-Hmac"] = signature,
      ["X-Webhook-Hmac-Algorithm"] = "sha512",
    }, body)
  end
  position = tonumber(args[2] or "0")
end

function request()
  position = position + 1
  if position > #requests then
    position = 1
    wrapped = wrapped + 1
  end
  return requests[position]
end

function done(summary, latency, _)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"wrapped":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout, wraps))
end
