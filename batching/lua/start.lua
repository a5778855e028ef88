-- Mark the entries of a pulled micro-batch as running, but only those still queued:
-- a redelivered entry whose result was already written stays final.
--
-- KEYS[i]   job record of entry i
-- ARGV[1]   worker id
-- returns   the state of each record after the call (false for a missing record)
local states = {}
for i = 1, #KEYS do
  local st = redis.call('HGET', KEYS[i], 'st')
  if st == 'queued' then
    redis.call('HSET', KEYS[i], 'st', 'running', 'w', ARGV[1])
    st = 'running'
  end
  states[i] = st
end
return states
