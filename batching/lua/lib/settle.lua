-- Settle a bulk batch's counters: the ONE copy, included by the scripts that count items
-- as final (finish.lua, batch_feed.lua, batch_stop.lua); never loaded alone.
-- Adds each {state, items} of ``counts`` to the batch and to its 'settled'; the call that
-- makes 'settled' reach 'total' settles the batch, exactly once: 'finished_at' is set, a
-- running batch becomes 'completed' (a cancelled or failed one keeps its status), and it
-- moves from the active set to the settled outbox (the sweeper sends its webhook).
--
-- batch     the batch hash            active    the model's active-batch set
-- outbox    the model's settled-batch outbox
-- counts    array of {final state, items}
local function settle(batch, active, outbox, counts)
  local added = 0
  for _, c in ipairs(counts) do
    if c[2] > 0 then
      redis.call('HINCRBY', batch, c[1], c[2])
      added = added + c[2]
    end
  end
  local b = redis.call('HMGET', batch, 'total', 'status', 'id')
  if redis.call('HINCRBY', batch, 'settled', added) == tonumber(b[1]) then
    local t = redis.call('TIME')
    redis.call('HSET', batch, 'finished_at', t[1] * 1000 + math.floor(t[2] / 1000))
    if b[2] == 'running' or b[2] == 'validating' then
      redis.call('HSET', batch, 'status', 'completed')
    end
    redis.call('SREM', active, b[3])
    redis.call('SADD', outbox, b[3])
  end
end
