-- Cancel a submission that no worker has started: mark it cancelled (final), delete its
-- stream entry so it frees its queue slot and never reaches the model, release its
-- version pin, and tell any waiter. A worker that already pulled it finds the record
-- final and only acknowledges it.
--
-- KEYS[1]   job record          KEYS[2]   the entry's stream      KEYS[3]   watcher set
-- KEYS[4]   the model's outcome counters
-- ARGV[1]   stream entry id     ARGV[2]   result TTL seconds
-- ARGV[3]   packed cancellation result                           ARGV[4]   pin key prefix
-- returns   the record's state after the call ('cancelled' when this call or an earlier
--           one cancelled it), or false for an unknown job
local st = redis.call('HGET', KEYS[1], 'st')
if not st then
  return false
end
if st ~= 'queued' then
  return st
end
local entry = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if entry[1] then
  local fields = entry[1][2]
  for f = 1, #fields, 2 do
    if fields[f] == 'v' and fields[f + 1] ~= '0' then
      redis.call('DECR', ARGV[4] .. fields[f + 1])
    end
  end
end
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'st', 'cancelled', 'res', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
local message = KEYS[1] .. '\ncancelled\n' .. ARGV[3]
local reply = redis.call('HGET', KEYS[1], 'rp')
if reply then
  redis.call('PUBLISH', reply, message)
end
for _, channel in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if channel ~= reply then
    redis.call('PUBLISH', channel, message)
  end
end
redis.call('DEL', KEYS[3])
redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
return 'cancelled'
