-- Read a job for a long-poller, and if it is not final yet, register the poller's
-- reply channel so the worker publishes the result to it too. Atomic with
-- finish.lua: either the result is returned here or it will be published.
--
-- KEYS[1]   job record
-- KEYS[2]   watcher set of the entry
-- ARGV[1]   reply channel of the polling API process
-- ARGV[2]   TTL of the watcher set in seconds
-- returns   {state, rows, priority, result or false, tenant or false}, or false for an
--           unknown job
local v = redis.call('HMGET', KEYS[1], 'st', 'n', 'pr', 'res', 'tn')
if not v[1] then
  return false
end
if not v[4] then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
end
return {v[1], v[2], v[3], v[4], v[5]}
