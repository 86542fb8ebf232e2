-- wrk script: POST a unique ENRICHMENT_NOTIFICATION per request, authenticated with the
-- secret-key scheme (the header carries the shared secret), so every request is a fresh
-- delivery that must be committed before it is acknowledged.
--
-- `setup` runs in wrk's main script and `thread:set` sets a *global* in each thread's own
-- script, so `thread_id` must not be declared `local` here: a local would shadow it, every
-- thread would send the same sequence of bodies, and all but one thread's deliveries would
-- be duplicates (acknowledged without being stored).
local counter = 0
local threads = 0

setup = function(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"event_name":"ENRICHMENT_NOTIFICATION","session_id":"bench-%d-%d","insights_available":true,"accounts":[]}',
    thread_id, counter)
  return wrk.format("POST", "/webhooks/bankconnect",
    {["content-type"] = "application/json", ["x-secret-key"] = "bench-secret"}, body)
end
