-- Take or renew the ingest lease of a batch. One ingest job feeds a batch at a time;
-- a job whose worker died stops renewing, and after the lease runs out the sweeper
-- starts another, which resumes at the batch's recorded offsets.
--
-- KEYS[1]   the batch hash
-- ARGV[1]   owner (a unique id of this ingest attempt)     ARGV[2]   lease length, ms
-- returns   'held' (ours now), 'taken' (another live owner), or 'stopped' (settled,
--           cancelled, failed or gone: nothing to feed)
local b = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'lease_until')
if b[1] ~= 'validating' and b[1] ~= 'running' then
  return 'stopped'
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if b[2] == ARGV[1] or not b[3] or tonumber(b[3]) < now then
  redis.call('HSET', KEYS[1], 'lease_owner', ARGV[1], 'lease_until', now + tonumber(ARGV[2]))
  return 'held'
end
return 'taken'
