#!lua
-- send_rate_take: a token bucket per WAHA session. Takes one send if the bucket has one.
-- Returns 0 when granted, else how many ms until one will be there. Uses the Redis clock, so
-- every worker process shares one notion of time.
local bucket_key = KEYS[1]     -- HASH tokens, at_ms
local rate = tonumber(ARGV[1]) -- sends per second
local burst = tonumber(ARGV[2])
--#include clock

local now_ms = redis_now_ms()
local state = redis.call('HMGET', bucket_key, 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + math.max(0, now_ms - at) * rate / 1000)
local granted = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  granted = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', bucket_key, 'tokens', tostring(tokens), 'at', now_ms)
-- An idle bucket refills fully in burst / rate seconds; keep it a little longer than that.
redis.call('PEXPIRE', bucket_key, math.ceil(burst / rate * 1000) + 1000)
return granted
