-- Finish records: the ONE step that makes a job final, used by every path (a worker's
-- results, a cancel, a dead-letter, a stopped batch). Per record, only while it may still
-- change (see ``mode``): write its state and result, let it expire after its own TTL
-- ('tt', a bulk batch's retention) or the default, count it in its bulk batch and drop it
-- from the batch's in-flight hash (settling the batch with its last item), release its
-- version pin, publish it to every watcher's reply channel (long-polls register there; a
-- ``/v1`` submitter does not wait, so nobody else is told), count the
-- outcome. A record already final is left as it is, so a second finish (a late duplicate
-- from a reclaimed entry, a cancel racing a result) is a no-op. Then XACK and XDEL.
--
-- A synchronous entry (``/v2`` infer) has no record: its entry carries the reply channel,
-- passed here. It finishes only while still pending (XACK acknowledges it), so a reclaimed
-- duplicate finishing later releases no pin, counts nothing and publishes nothing.
-- Outcomes and statistics are counted once per call (one HINCRBY per field), not per record.
--
-- KEYS[1]   the model's outcome counters
-- KEYS[2]   the model's settled-batch outbox      KEYS[3]   the model's active-batch set
-- KEYS[4]   the version's statistics hash, when ARGV[5] is 1
-- then per record i: its stream, job record (for a synchronous entry only the name its
--   waiter knows it by, never touched), watcher set (three keys)
-- then per bulk batch j: its hash, its in-flight hash (two keys)
-- ARGV[1]   consumer group        ARGV[2]   default TTL, seconds
-- ARGV[3]   pinned-version counter key prefix
-- ARGV[4]   records               ARGV[5]   1 when KEYS[4] is a statistics hash, else 0
-- ARGV[6]   n: statistics pairs that follow (field, increment; last_inference: set)
-- then per record, nine values: entry id, final state, packed result, duration ns
--   (statistics), version it asked for (0: none pinned; '': read it from the entry),
--   rows the model rejected alone (failed within a done entry), its batch's index j
--   (0: none), mode: 'running' finishes a queued or running record and always acks the
--   entry (its deliverer is done with it), 'queued' only a queued one (a cancel),
--   'stop' a queued one or a running one whose entry is gone (a stopped batch); reply
--   channel of a synchronous entry ('' for an entry with a record)
-- returns   {records written, indexes of records whose batch was not passed}: those are
--           left untouched; call again with their batch (the record's 'bt')
local group, ttl, pinned_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local records, has_stats, pairs_ = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local outcomes, outbox, active = KEYS[1], KEYS[2], KEYS[3]
local stats = has_stats == 1 and KEYS[4] or nil
-- @include settle
if stats then
  for p = 0, pairs_ - 1 do
    local field, value = ARGV[7 + 2 * p], ARGV[8 + 2 * p]
    if field == 'last_inference' then
      redis.call('HSET', stats, field, value)
    else
      redis.call('HINCRBY', stats, field, value)
    end
  end
end
local FINAL = {done = true, failed = true, expired = true, cancelled = true}
local outcome_counts, stat_counts = {}, {}
local function count(state, duration)
  outcome_counts[state] = (outcome_counts[state] or 0) + 1
  local outcome = state == 'done' and 'success' or 'fail'
  stat_counts[outcome .. '_count'] = (stat_counts[outcome .. '_count'] or 0) + 1
  stat_counts[outcome .. '_ns'] = (stat_counts[outcome .. '_ns'] or 0) + tonumber(duration)
end
local function release(version)
  if version ~= '0' then
    redis.call('DECR', pinned_prefix .. version)
  end
end
local k0 = 3 + has_stats
local batches = k0 + 3 * records
local a0 = 6 + 2 * pairs_
local written, unresolved = 0, {}
for i = 1, records do
  local stream, record, watch = KEYS[k0 + 3 * i - 2], KEYS[k0 + 3 * i - 1], KEYS[k0 + 3 * i]
  local a = a0 + 9 * (i - 1)
  local id, state, result, duration = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local version, rejected, j, mode = ARGV[a + 5], tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), ARGV[a + 8]
  local sync_reply = ARGV[a + 9]
  if sync_reply ~= '' then
    if redis.call('XACK', stream, group, id) == 1 then
      release(version)
      redis.call('PUBLISH', sync_reply, record .. '\n' .. state .. '\n' .. result)
      count(state, duration)
      written = written + 1
    end
    redis.call('XDEL', stream, id)
  else
    local r = redis.call('HMGET', record, 'st', 'bt', 'n', 'tt')
    local st, bt = r[1], r[2]
    local batch, inflight
    if j > 0 then
      batch, inflight = KEYS[batches + 2 * j - 1], KEYS[batches + 2 * j]
    end
    if bt and bt ~= batch then
      table.insert(unresolved, i)  -- its batch was not passed: touch nothing, ask for it
    else
      local finish = st == 'queued' or (st == 'running' and mode ~= 'queued')
      if st == 'running' and mode == 'stop' then
        finish = #redis.call('XRANGE', stream, id, id) == 0  -- its entry is gone: never finishes
      end
      if finish then
        if version == '' then
          version = '0'
          local entry = redis.call('XRANGE', stream, id, id)[1]
          for f = 1, (entry and #entry[2] or 0), 2 do
            if entry[2][f] == 'v' then
              version = entry[2][f + 1]
            end
          end
        end
        redis.call('HSET', record, 'st', state, 'res', result)
        redis.call('EXPIRE', record, tonumber(r[4] or ttl))
        if bt then
          local rows = tonumber(r[3])
          redis.call('HDEL', inflight, record)
          if state == 'done' then
            settle(batch, active, outbox, {{'done', rows - rejected}, {'failed', rejected}})
          else
            settle(batch, active, outbox, {{state, rows}})
          end
        end
        release(version)
        local message = record .. '\n' .. state .. '\n' .. result
        for _, channel in ipairs(redis.call('SMEMBERS', watch)) do
          redis.call('PUBLISH', channel, message)
        end
        redis.call('DEL', watch)
        count(state, duration)
        written = written + 1
      elseif bt and FINAL[st] and redis.call('HDEL', inflight, record) == 1 then
        -- final, yet never counted in its batch (finished by a step that did not settle)
        settle(batch, active, outbox, {{st, tonumber(r[3])}})
      end
      if finish or mode == 'running' then
        redis.call('XACK', stream, group, id)
        redis.call('XDEL', stream, id)
      end
    end
  end
end
for state, n in pairs(outcome_counts) do
  redis.call('HINCRBY', outcomes, state, n)
end
if stats then
  for field, n in pairs(stat_counts) do
    redis.call('HINCRBY', stats, field, string.format('%d', n))
  end
end
return {written, unresolved}
