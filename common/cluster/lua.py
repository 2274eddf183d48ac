"""The store's Lua scripts: each runs atomically inside Redis, in one round trip.

Kept apart from :mod:`common.cluster.store`, which registers and calls them, so
the Python reads as the store's contract and the Lua as its mechanics. Every
script touches only the keys passed in ``KEYS`` (see the store's key layout).
"""

# KEYS[1] job hash, KEYS[2] active set, KEYS[3] stats hash, KEYS[4] callback outbox;
# ARGV[1] new status, ARGV[2] now, ARGV[3..] allowed current statuses. Sets the extra fields
# given after a "--" marker and counts the job as having entered the new status; a success
# counts as one stitch in the same step, so no reader sees a succeeded job with no stitch.
# Ending a job (a final status) also, in the same step: takes it off the active set, queues
# its callback if it has one (so no process dying after this can lose it), and announces
# the end on the job's channel (PUBLISH <job key>:ended) for requests waiting on it.
# Returns 1 if changed, 0 otherwise.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local allowed = false
local i = 3
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
  if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then
    redis.call('ZADD', KEYS[4], 'NX', ARGV[2], KEYS[1])
    redis.call('HSET', KEYS[1], 'callback_status', 'pending')
  end
  redis.call('PUBLISH', KEYS[1] .. ':ended', ARGV[1])
end
return 1
"""


# KEYS: job hash, deliveries hash, running hash, stats hash, then one input strip per part
# when the strips are in Redis (none when they are in a blob store).
# ARGV: runner, ttl, now, max deliveries, n, then (part, first byte, last byte) per part.
# Counts a delivery of every part and notes who runs it; marks the job processing (and
# counts it as having entered processing);
# returns {status, deadline, most deliveries, that part, parts of the job ever started},
# followed by 1 and the window bytes of each strip key only when the job is unfinished, in
# time and no part is over its deliveries (the 1 says "go" when the windows are read elsewhere).
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
reply[6] = 1
for i = 1, #KEYS - 4 do
  reply[6 + i] = redis.call('GETRANGE', KEYS[4 + i], ARGV[5 + 3 * i - 1], ARGV[5 + 3 * i])
end
return reply
"""


# KEYS: job hash, done set, workers hash, stats hash, then one output key per part when
# the outputs are stored here.
# ARGV: worker, ttl, now, n, model, where the outputs are ('redis': the n outputs follow and
# are stored here; 'blobs': already in the blob store; 'none': not stored, the caller keeps
# them and stitches, so nothing has landed), then the n part numbers, the n parts' latency
# bucket labels, their n seconds (see common.cluster.stats) and, for 'redis', the n outputs.
# Stores the outputs only while the job is unfinished (a tile finishing after a
# cancel must not leave data behind) and notes when the last part landed. A part
# done for the first time counts once in the model's tiles and latency histogram
# (a redelivered part rewrites its output and counts nothing).
# Returns {parts done, 1 if this call landed the last part else 0}, or {-1, 0}.
RECORD_OUTPUTS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'processing' then return {-1, 0} end
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local model = ARGV[5]
local where = ARGV[6]
local new, seconds = 0, 0
for i = 1, n do
  local part = ARGV[6 + i]
  if where == 'redis' then
    redis.call('SET', KEYS[4 + i], ARGV[6 + 3 * n + i], 'EX', ttl)
  end
  if redis.call('SADD', KEYS[2], part) == 1 then
    new = new + 1
    seconds = seconds + tonumber(ARGV[6 + 2 * n + i])
    redis.call('HINCRBY', KEYS[4], 'tile_seconds:' .. model .. ':' .. ARGV[6 + n + i], 1)
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
if where ~= 'none' and done >= tonumber(redis.call('HGET', KEYS[1], 'parts')) then
  landed = redis.call('HSETNX', KEYS[1], 'landed', ARGV[3])
end
return {done, landed}
"""


# KEYS: workers sorted set, slots hash, then hashes keyed "<worker> ..." (engines, speeds);
# ARGV: now.
FORGET_DEAD = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #dead == 0 then return 0 end
local gone = {}
for _, name in ipairs(dead) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
  gone[name] = true
end
for k = 3, #KEYS do
  for _, key in ipairs(redis.call('HKEYS', KEYS[k])) do
    if gone[string.match(key, '^(%S+)')] then redis.call('HDEL', KEYS[k], key) end
  end
end
return #dead
"""


# KEYS[1] callback outbox; ARGV[1] now, ARGV[2] lease end, ARGV[3] most to claim.
# Claims the callbacks due by now: each one's score moves to the lease's end, so no
# other deliverer takes it meanwhile, and it comes due again if this one dies.
# Returns the claimed members (job keys).
CLAIM_CALLBACKS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"""
