-- lib/clock: Redis's own clock, so every process agrees on one time whatever its host's says.

-- redis_now_ms(): now in milliseconds (TIME answers seconds and microseconds).
local function redis_now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
