-- Finish the entries of one micro-batch in one call: write each result while its job
-- is not yet final (a late duplicate from a reclaimed entry never overwrites or
-- double-counts the finished one), publish it to the submitter's and any
-- long-poller's reply channel, then XACK and XDEL the entry (its inputs are no
-- longer needed; the queue stays bounded by admission, never by trimming). The
-- model's statistics (Triton's statistics extension) are counted in the same call, and
-- so are the counters of the bulk batch an entry belongs to (its record's 'bt').
--
-- KEYS[1]                            the statistics hash of the model version
-- KEYS[2]                            the model's outcome counters
-- KEYS[3], KEYS[4]                   the model's settled-batch outbox and active-batch set
-- KEYS[3i+2], KEYS[3i+3], KEYS[3i+4] stream, job record, watcher set of entry i
-- ARGV[1]                            consumer group
-- ARGV[2]                            result TTL in seconds
-- ARGV[3]                            pinned-version counter key prefix
-- ARGV[4]                            n: how many statistics pairs follow
-- ARGV[5 .. 4+2n]                    statistics field, increment (last_inference: set)
-- then per entry i, six values       entry id, final state, packed result, duration ns,
--                                    version it asked for (0: any; else its pin is released),
--                                    rows the model rejected alone (failed within a done entry)
-- returns                            how many results were written (duplicates are not)
local stats, group, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local pinned_prefix, pairs_ = ARGV[3], tonumber(ARGV[4])
for p = 0, pairs_ - 1 do
  local field, value = ARGV[5 + 2 * p], ARGV[6 + 2 * p]
  if field == 'last_inference' then
    redis.call('HSET', stats, field, value)
  else
    redis.call('HINCRBY', stats, field, value)
  end
end
local base = 4 + 2 * pairs_
local written = 0
for i = 1, (#KEYS - 4) / 3 do
  local stream, record, watch = KEYS[3 * i + 2], KEYS[3 * i + 3], KEYS[3 * i + 4]
  local a = base + 6 * (i - 1)
  local id, state, result, duration = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local pinned, rejected = ARGV[a + 5], tonumber(ARGV[a + 6])
  local st = redis.call('HGET', record, 'st')
  if st == 'queued' or st == 'running' then
    redis.call('HSET', record, 'st', state, 'res', result)
    local batch = redis.call('HGET', record, 'bt')
    redis.call('EXPIRE', record, tonumber(redis.call('HGET', record, 'tt') or ttl))
    if batch then
      local rows = tonumber(redis.call('HGET', record, 'n'))
      if state == 'done' then
        redis.call('HINCRBY', batch, 'done', rows - rejected)
        redis.call('HINCRBY', batch, 'failed', rejected)
      else
        redis.call('HINCRBY', batch, state, rows)
      end
      redis.call('HDEL', batch .. ':inflight', record)
      local b = redis.call('HMGET', batch, 'total', 'status', 'id')
      if redis.call('HINCRBY', batch, 'settled', rows) == tonumber(b[1]) then
        -- settle: the last item is final (same steps in batch_feed.lua and batch_stop.lua)
        local t = redis.call('TIME')
        redis.call('HSET', batch, 'finished_at', t[1] * 1000 + math.floor(t[2] / 1000))
        if b[2] == 'running' then
          redis.call('HSET', batch, 'status', 'completed')
        end
        redis.call('SREM', KEYS[4], b[3])
        redis.call('SADD', KEYS[3], b[3])
      end
    end
    local outcome = state == 'done' and 'success' or 'fail'
    redis.call('HINCRBY', stats, outcome .. '_count', 1)
    redis.call('HINCRBY', stats, outcome .. '_ns', duration)
    redis.call('HINCRBY', KEYS[2], state, 1)
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
    if pinned ~= '0' then
      redis.call('DECR', pinned_prefix .. pinned)
    end
    written = written + 1
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end
return written
