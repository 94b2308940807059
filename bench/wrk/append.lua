-- wrk script: one single-event append per request (~300-byte payload).
-- wrk -t2 -c64 -d5s -s bench/wrk/append.lua http://127.0.0.1:7171/v1/streams/bench-1/events
wrk.method = "POST"
wrk.body = "{\"events\": [{\"type\": \"BenchEvent\", \"data\": {\"payload\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}]}"
wrk.headers["Content-Type"] = "application/json"
