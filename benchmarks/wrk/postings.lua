-- wrk script for the inbox benchmark: POST one posting per request, each with a unique messageId and
-- orderCode, and count the answers that are not 200. (wrk runs for its -d duration whatever a script
-- does, so benchmarks/inbox.py picks the duration that gives the wanted number of postings.)
--
-- Environment (set by benchmarks/inbox.py):
--   BENCH_BODY_FILE   posting JSON with the placeholders {{ID}} (messageId, a JSON number) and
--                     {{CODE}} (orderCode)
--   BENCH_API_KEY     sent as X-Api-Key
--   BENCH_FIRST_ID    first messageId; thread i starts at BENCH_FIRST_ID + i * BENCH_ID_STRIDE, so ids
--                     never repeat within a run (a run sends far fewer than the stride per thread)
-- done() prints one line "BENCH_RESULT {json}" that the benchmark parses.

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "r"))
   template = file:read("*a")
   file:close()
   next_id = tonumber(os.getenv("BENCH_FIRST_ID")) + thread_index * tonumber(os.getenv("BENCH_ID_STRIDE"))
   headers = {["Content-Type"] = "application/json", ["X-Api-Key"] = os.getenv("BENCH_API_KEY")}
   answered = 0
   refused = 0
end

function request()
   local id = next_id
   next_id = next_id + 1
   local body = template:gsub("{{ID}}", tostring(id)):gsub("{{CODE}}", "BENCH" .. id)
   return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
   answered = answered + 1
   if status ~= 200 then
      refused = refused + 1
   end
end

function done(summary, latency, requests)
   local total_answered, total_refused = 0, 0
   for _, thread in ipairs(threads) do
      total_answered = total_answered + thread:get("answered")
      total_refused = total_refused + thread:get("refused")
   end
   io.write(string.format(
      'BENCH_RESULT {"answered": %d, "non_200": %d, "duration_us": %d, "socket_errors": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
      total_answered, total_refused, summary.duration,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
