-- Undo a batch creation the client was told failed (503): forget its Idempotency-Key (only
-- while it still names this batch), its record and its index entries, so no listing shows
-- it and no sweeper ever starts it. The key goes first: a retry must never replay a batch
-- that is gone.
--
-- KEYS[1]   the idempotency key   KEYS[2]   the batch hash
-- KEYS[3]   the active set        KEYS[4]   the model's batch index
-- KEYS[5]   the tenant's batch index
-- ARGV[1]   batch id              ARGV[2]   what the idempotency key remembers, or ''
if ARGV[2] ~= '' and redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return true
