"""The store's Lua scripts: each runs atomically inside Redis, in one round trip.

Kept apart from :mod:`common.cluster.store`, which registers and calls them, so
the Python reads as the store's contract and the Lua as its mechanics. Every
script touches only the keys passed in ``KEYS`` (see the store's key layout).
"""

# KEYS[1] job hash, KEYS[2] active set, KEYS[3] stats hash; ARGV[1] new status, ARGV[2..]
# allowed current statuses. Sets the extra fields given after a "--" marker and counts the
# job as having entered the new status; a success counts as one stitch in the same step, so
# no reader sees a succeeded job with no stitch. Returns 1 if changed, 0 otherwise.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local allowed = false
local i = 2
while ARGV[i] ~= '--' do
  if ARGV[i] == current then allowed = true end
  i = i + 1
end
if not allowed then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'jobs:' .. ARGV[1], 1)
if ARGV[1] == 'success' then redis.call('HINCRBY', KEYS[1], 'stitches', 1) end
i = i + 1
while ARGV[i] do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if ARGV[1] == 'success' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('ZREM', KEYS[2], KEYS[1])
end
return 1
"""


# KEYS: job hash, deliveries hash, running hash, stats hash, then one input strip per part.
# ARGV: runner, ttl, now, max deliveries, n, then (part, first byte, last byte) per part.
# Counts a delivery of every part and notes who runs it; marks the job processing (and
# counts it as having entered processing);
# returns {status, deadline, most deliveries, that part, parts of the job ever started,
# window bytes...}; the windows only when the job is unfinished, in time and no part is
# over its deliveries.
BEGIN_GROUP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'processing' then return {status or '', '0', 0, -1} end
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if tonumber(deadline) < tonumber(ARGV[3]) then return {status, deadline, 0, -1} end
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[5])
local most, worst = 0, -1
for i = 1, n do
  local part = ARGV[5 + 3 * i - 2]
  local count = redis.call('HINCRBY', KEYS[2], part, 1)
  if count > most then most, worst = count, tonumber(part) end
  redis.call('HSET', KEYS[3], part, ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
local reply = {status, deadline, most, worst, redis.call('HLEN', KEYS[2])}
if most > tonumber(ARGV[4]) then return reply end
if status == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'processing', 'started', ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'jobs:processing', 1)
end
for i = 1, n do
  reply[5 + i] = redis.call('GETRANGE', KEYS[4 + i], ARGV[5 + 3 * i - 1], ARGV[5 + 3 * i])
end
return reply
"""


# KEYS: job hash, done set, workers hash, stats hash, then one output key per part.
# ARGV: worker, ttl, now, n, model, then the n part numbers, the n outputs, the n parts'
# latency bucket labels and their n seconds (see common.cluster.stats).
# Stores the outputs only while the job is unfinished (a tile finishing after a
# cancel must not leave data behind) and notes when the last part landed. An empty
# output is not stored (its caller keeps it and stitches), and then nothing has landed. A part
# done for the first time counts once in the model's tiles and latency histogram
# (a redelivered part rewrites its output and counts nothing).
# Returns {parts done, 1 if this call landed the last part else 0}, or {-1, 0}.
RECORD_OUTPUTS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'processing' then return {-1, 0} end
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local model = ARGV[5]
local new, seconds, kept = 0, 0, true
for i = 1, n do
  local part = ARGV[5 + i]
  if ARGV[5 + n + i] == '' then kept = false else
    redis.call('SET', KEYS[4 + i], ARGV[5 + n + i], 'EX', ttl)
  end
  if redis.call('SADD', KEYS[2], part) == 1 then
    new = new + 1
    seconds = seconds + tonumber(ARGV[5 + 3 * n + i])
    redis.call('HINCRBY', KEYS[4], 'tile_seconds:' .. model .. ':' .. ARGV[5 + 2 * n + i], 1)
  end
  redis.call('HSET', KEYS[3], part, ARGV[1])
end
if new > 0 then
  redis.call('HINCRBY', KEYS[4], 'tiles:' .. model, new)
  redis.call('HINCRBYFLOAT', KEYS[4], 'tile_seconds:' .. model .. ':sum', seconds)
end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
local done = redis.call('SCARD', KEYS[2])
local landed = 0
if kept and done >= tonumber(redis.call('HGET', KEYS[1], 'parts')) then
  landed = redis.call('HSETNX', KEYS[1], 'landed', ARGV[3])
end
return {done, landed}
"""


# KEYS: workers sorted set, slots hash, engines hash; ARGV: now.
FORGET_DEAD = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #dead == 0 then return 0 end
local gone = {}
for _, name in ipairs(dead) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
  gone[name] = true
end
for _, key in ipairs(redis.call('HKEYS', KEYS[3])) do
  if gone[string.match(key, '^(%S+)')] then redis.call('HDEL', KEYS[3], key) end
end
return #dead
"""
