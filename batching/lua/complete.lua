-- Finish the entries of one micro-batch in one call: write each result while its job
-- is not yet final (a late duplicate from a reclaimed entry never overwrites or
-- double-counts the finished one), publish it to the submitter's and any
-- long-poller's reply channel, then XACK and XDEL the entry (its inputs are no
-- longer needed; the queue stays bounded by admission, never by trimming).
--
-- KEYS[3i-2], KEYS[3i-1], KEYS[3i]   stream, job record, watcher set of entry i
-- ARGV[1]                            consumer group
-- ARGV[2]                            result TTL in seconds
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2]   entry id, final state, packed result of entry i
-- returns                            how many results were written (duplicates are not)
local group, ttl = ARGV[1], tonumber(ARGV[2])
local written = 0
for i = 1, #KEYS / 3 do
  local stream, record, watch = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local id, state, result = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local st = redis.call('HGET', record, 'st')
  if st == 'queued' or st == 'running' then
    redis.call('HSET', record, 'st', state, 'res', result)
    redis.call('EXPIRE', record, ttl)
    local message = record .. '\n' .. state .. '\n' .. result
    local reply = redis.call('HGET', record, 'rp')
    if reply then
      redis.call('PUBLISH', reply, message)
    end
    for _, channel in ipairs(redis.call('SMEMBERS', watch)) do
      if channel ~= reply then
        redis.call('PUBLISH', channel, message)
      end
    end
    redis.call('DEL', watch)
    written = written + 1
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end
return written
