"""Lua scripts for the Redis backend: each operation is one atomic script call (one round trip).

Time is always Redis server time (`TIME`), so instances with skewed clocks agree. Numbers written back to Redis
are formatted with %.17g (Lua's default formatting keeps only 14 digits, which would round millisecond
timestamps). The arithmetic mirrors `sluicegate.state.ratewindow` and `sluicegate.state.budget` exactly.
"""

from __future__ import annotations

from redis.asyncio import Redis

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""

# KEYS[1] slot set (member = a lease's name: holder id and acquire serial; score = lease expiry in ms).
# ARGV: cap, ttl_ms, member... (in queue order). Grants members in order while under the cap; a member that
# already holds a lease is renewed and counts as granted. Returns how many leading members were granted.
ACQUIRE = (
    _NOW_MS
    + """
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local expiry = string.format('%.17g', math.floor(now) + ttl)
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.17g', now))
local count = redis.call('ZCARD', key)
local granted = 0
for i = 3, #ARGV do
  local holder = ARGV[i]
  if redis.call('ZSCORE', key, holder) then
    redis.call('ZADD', key, expiry, holder)
  elseif count < cap then
    redis.call('ZADD', key, expiry, holder)
    count = count + 1
  else
    break
  end
  granted = granted + 1
end
if granted > 0 then
  redis.call('PEXPIRE', key, ttl)
end
return granted
"""
)

# KEYS[1] slot set. ARGV: member, channel, message. Publishes on the release channel only when a lease was
# actually removed, so waiters on every instance wake at once.
RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return removed
"""

# KEYS: slot sets. ARGV: ttl_ms, then per key: n, member x n. Drops expired leases and upserts ours: a lease
# that was lost (Redis restarted or was unreachable past the ttl) is restored, because its stream still runs.
# Returns how many leases had to be restored.
RENEW = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[1])
local expiry = string.format('%.17g', math.floor(now) + ttl)
local pos = 2
local restored = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.17g', now))
  for i = 1, n do
    restored = restored + redis.call('ZADD', key, expiry, ARGV[pos])
    pos = pos + 1
  end
  redis.call('PEXPIRE', key, ttl)
end
return restored
"""
)

# KEYS[1] slot set. Returns the number of unexpired leases.
IN_USE = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.17g', now), '+inf')
"""
)

# KEYS[1] hash {w = window index, p = previous count, c = current count}. ARGV: limit, window_ms.
# Returns {allowed 0|1, retry_after_s as a string}.
HIT_RATE = (
    _NOW_MS
    + """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local state = redis.call('HMGET', key, 'w', 'p', 'c')
local index = math.floor(now / window)
local previous = tonumber(state[2]) or 0
local current = tonumber(state[3]) or 0
local stored = tonumber(state[1])
if stored == nil then
  previous = 0
  current = 0
elseif index == stored + 1 then
  previous = current
  current = 0
elseif index > stored + 1 then
  previous = 0
  current = 0
elseif index < stored then
  index = stored
end
local elapsed = now - index * window
local estimate = previous * (1 - elapsed / window) + current
if estimate + 1 <= limit then
  redis.call('HSET', key, 'w', string.format('%.17g', index), 'p', string.format('%.17g', previous),
    'c', string.format('%.17g', current + 1))
  redis.call('PEXPIRE', key, math.ceil(2 * window))
  return {1, '0'}
end
local wait
if current + 1 <= limit then
  wait = window * (1 - (limit - 1 - current) / previous) - elapsed
  if wait < 0 then wait = 0 end
else
  local next_wait = window * (1 - (limit - 1) / current)
  if next_wait < 0 then next_wait = 0 end
  wait = (window - elapsed) + next_wait
end
return {0, string.format('%.17g', wait / 1000)}
"""
)

# KEYS[1] hash {b = balance, t = last update ms}. ARGV: op ('d' deposit | 'w' withdraw | 'p' peek),
# deposit amount (ratio x pending requests, applied first for every op), min_per_second, capacity,
# initial balance, idle_reset_ms. Returns {ok 0|1, balance as a string}.
BUDGET = (
    _NOW_MS
    + """
local key = KEYS[1]
local op = ARGV[1]
local deposit = tonumber(ARGV[2])
local per_second = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local initial = tonumber(ARGV[5])
local idle_reset = tonumber(ARGV[6])
local state = redis.call('HMGET', key, 'b', 't')
local balance = tonumber(state[1])
local updated = tonumber(state[2])
if balance == nil or updated == nil or now - updated > idle_reset then
  balance = initial
  updated = now
else
  if now > updated then
    balance = math.min(capacity, balance + (now - updated) / 1000 * per_second)
    updated = now
  end
end
if deposit > 0 then
  balance = math.min(capacity, balance + deposit)
end
local ok = 1
if op == 'w' then
  if balance >= 1 then
    balance = balance - 1
  else
    ok = 0
  end
end
if op ~= 'p' or deposit > 0 then
  redis.call('HSET', key, 'b', string.format('%.17g', balance), 't', string.format('%.17g', updated))
  redis.call('PEXPIRE', key, idle_reset)
end
return {ok, string.format('%.17g', balance)}
"""
)

# KEYS[1] failure counter. ARGV: memory_ms. Returns the new consecutive-failure count.
RECORD_FAILURE = """
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return count
"""

# KEYS[1] failure counter, KEYS[2] cooldown hash. Resets failures; ends probation unless still cooling down.
RECORD_SUCCESS = (
    _NOW_MS
    + """
redis.call('DEL', KEYS[1])
local untl = tonumber(redis.call('HGET', KEYS[2], 'u'))
if untl ~= nil and untl <= now then
  redis.call('DEL', KEYS[2])
end
return 0
"""
)

# KEYS[1] cooldown hash {u = until ms, q = probe until ms}. ARGV: seconds_ms, probation_max_ms.
START_COOLDOWN = (
    _NOW_MS
    + """
local ms = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'u', string.format('%.17g', now + ms), 'q', '0')
redis.call('PEXPIRE', KEYS[1], math.ceil(ms + tonumber(ARGV[2])))
return 0
"""
)

# KEYS[1] cooldown hash. Returns {remaining_s as a string, on_probation 0|1}.
COOLDOWN_STATUS = (
    _NOW_MS
    + """
local untl = tonumber(redis.call('HGET', KEYS[1], 'u'))
if untl == nil then
  return {'0', 0}
end
if untl > now then
  return {string.format('%.17g', (untl - now) / 1000), 0}
end
return {'0', 1}
"""
)

# KEYS[1] cooldown hash. ARGV: ttl_ms. One caller per ttl gets 1, only once the cooldown is over.
TRY_PROBE = (
    _NOW_MS
    + """
local state = redis.call('HMGET', KEYS[1], 'u', 'q')
local untl = tonumber(state[1])
if untl == nil or untl > now then
  return 0
end
if (tonumber(state[2]) or 0) > now then
  return 0
end
redis.call('HSET', KEYS[1], 'q', string.format('%.17g', now + tonumber(ARGV[1])))
return 1
"""
)


class Scripts:
    """The scripts registered on one client (EVALSHA, reloaded by redis-py after a Redis restart)."""

    def __init__(self, client: Redis) -> None:
        self.acquire = client.register_script(ACQUIRE)
        self.release = client.register_script(RELEASE)
        self.renew = client.register_script(RENEW)
        self.in_use = client.register_script(IN_USE)
        self.hit_rate = client.register_script(HIT_RATE)
        self.budget = client.register_script(BUDGET)
        self.record_failure = client.register_script(RECORD_FAILURE)
        self.record_success = client.register_script(RECORD_SUCCESS)
        self.start_cooldown = client.register_script(START_COOLDOWN)
        self.cooldown_status = client.register_script(COOLDOWN_STATUS)
        self.try_probe = client.register_script(TRY_PROBE)
