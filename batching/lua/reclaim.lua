-- Take over entries another consumer left unacknowledged past the visibility
-- timeout (it crashed or hung), and dead-letter those delivered too often: their
-- job fails with a clear reason instead of crashing workers forever.
--
-- KEYS[1]   the stream            KEYS[2]   the model's outcome counters
-- ARGV[1]   consumer group          ARGV[2]   this consumer
-- ARGV[3]   min idle ms             ARGV[4]   most entries to claim
-- ARGV[5]   max deliveries          ARGV[6]   job record key prefix
-- ARGV[7]   result TTL seconds      ARGV[8]   packed dead-letter result
-- ARGV[9]   watcher set key prefix     ARGV[10]  this stream's priority level
-- ARGV[11]  pinned-version counter key prefix
-- returns   {claimed entries as XREADGROUP gives them, dead-lettered ids}
local stream, group = KEYS[1], ARGV[1]
local claimed = redis.call('XAUTOCLAIM', stream, group, ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local keep, dead = {}, {}
for _, entry in ipairs(claimed[2]) do
  local id = entry[1]
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  local deliveries = pending[1] and tonumber(pending[1][4]) or 0
  if deliveries > tonumber(ARGV[5]) then
    local ref = id .. '-' .. ARGV[10]
    local record = ARGV[6] .. ref
    local st = redis.call('HGET', record, 'st')
    if st == 'queued' or st == 'running' then
      local result = ARGV[8]
      redis.call('HSET', record, 'st', 'failed', 'res', result)
      redis.call('HINCRBY', KEYS[2], 'failed', 1)
      redis.call('EXPIRE', record, tonumber(ARGV[7]))
      local reply = redis.call('HGET', record, 'rp')
      local message = record .. '\nfailed\n' .. result
      local watch = ARGV[9] .. ref
      for _, channel in ipairs(redis.call('SMEMBERS', watch)) do
        redis.call('PUBLISH', channel, message)
      end
      redis.call('DEL', watch)
      if reply then
        redis.call('PUBLISH', reply, message)
      end
      local fields = entry[2]
      for f = 1, #fields, 2 do
        if fields[f] == 'v' and fields[f + 1] ~= '0' then
          redis.call('DECR', ARGV[11] .. fields[f + 1])
        end
      end
    end
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    table.insert(dead, ref)
  else
    table.insert(keep, entry)
  end
end
return {keep, dead}
