-- wrk script: POST a unique ENRICHMENT_NOTIFICATION per request, authenticated with the
-- secret-key scheme (the header carries the shared secret), so every request is a fresh
-- delivery that must be committed before it is acknowledged.
local counter = 0
local thread_id = 0

setup = function(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"event_name":"ENRICHMENT_NOTIFICATION","session_id":"bench-%d-%d","insights_available":true,"accounts":[]}',
    thread_id, counter)
  return wrk.format("POST", "/webhooks/bankconnect",
    {["content-type"] = "application/json", ["x-secret-key"] = "bench-secret"}, body)
end
