-- Create a batch, or return the one an earlier request with the same Idempotency-Key
-- created: the check and the creation are one step, so two racing requests with one
-- key never make two batches.
--
-- KEYS[1]   the batch hash        KEYS[2]   the model's batch index (sorted set)
-- KEYS[3]   the active set        KEYS[4]   the idempotency key (unused when ARGV[3] is '')
-- KEYS[5]   the tenant's batch index (sorted set; KEYS[2] itself when keys are off)
-- ARGV[1]   batch id              ARGV[2]   creation time, unix ms
-- ARGV[3]   what the idempotency key remembers ('<fingerprint>\n<batch id>'), or ''
-- ARGV[4]   how long it remembers, seconds
-- ARGV[5..] the batch's fields and values
-- returns   false when created, else what the key remembered
if ARGV[3] ~= '' then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    return prior
  end
  redis.call('SET', KEYS[4], ARGV[3], 'EX', tonumber(ARGV[4]))
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return false
