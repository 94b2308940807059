-- wrk script: single-event appends spread over 64 streams, one stream per request in
-- turn (~300-byte payload), as `cairn bench append --clients 64` spreads them.
-- wrk -t2 -c64 -d10s -s bench/wrk/append-streams.lua http://127.0.0.1:7300
local body = "{\"events\": [{\"type\": \"BenchEvent\", \"data\": {\"payload\": \"" .. string.rep("x", 270) .. "\"}}]}"
local sent = 0
request = function()
  sent = sent + 1
  local path = "/v1/streams/wrk-" .. (sent % 64) .. "/events"
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end
