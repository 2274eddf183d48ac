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


# KEYS: job hash, deliveries hash, running hash, stats hash, done set, then one input strip
# per part when the strips are in Redis (none when they are in a blob store).
# ARGV: runner, ttl, now, max deliveries, n, then (part, first byte, last byte) per part.
# A group whose parts are all done already (a duplicate: the broker's redelivery of a task a
# janitor re-queued, or the reverse) is skipped whole: no delivery counted, nothing read;
# except in a job of one group stitched where it ran, whose cores were never stored.
# Otherwise counts a delivery of every part and notes who runs it; marks the job processing
# (and counts it as having entered processing) and notes the time as its latest progress;
# returns {status, deadline, most deliveries, that part, parts of the job ever started},
# followed by 1 and the window bytes of each strip key only when the job is unfinished, in
# time and no part is over its deliveries (the 1 says "go" when the windows are read
# elsewhere), or by 0 and whether the job has landed (1 or 0) for a group already done.
BEGIN_GROUP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'processing' then return {status or '', '0', 0, -1} end
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if tonumber(deadline) < tonumber(ARGV[3]) then return {status, deadline, 0, -1} end
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[5])
local whole = tonumber(redis.call('HGET', KEYS[1], 'groups') or '2') <= 1
if not whole or redis.call('HEXISTS', KEYS[1], 'landed') == 1 then
  local undone = 0
  for i = 1, n do
    if redis.call('SISMEMBER', KEYS[5], ARGV[5 + 3 * i - 2]) == 0 then undone = undone + 1 end
  end
  if undone == 0 then
    local landed = redis.call('HEXISTS', KEYS[1], 'landed')
    return {status, deadline, 0, -1, redis.call('HLEN', KEYS[2]), 0, landed}
  end
end
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
redis.call('HSET', KEYS[1], 'touched', ARGV[3])
reply[6] = 1
for i = 1, #KEYS - 5 do
  reply[6 + i] = redis.call('GETRANGE', KEYS[5 + i], ARGV[5 + 3 * i - 1], ARGV[5 + 3 * i])
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
# done for the first time counts once in the model's tiles and latency histogram, and
# notes the time as the job's latest progress (a redelivered part rewrites its output
# and counts nothing).
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
  redis.call('HSET', KEYS[1], 'touched', ARGV[3])
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
# ARGV: now. Returns the names forgotten: of racing janitors, exactly one gets each name.
FORGET_DEAD = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #dead == 0 then return dead end
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
return dead
"""


# KEYS: job hash, running hash, done set, workers sorted set, active set;
# ARGV: now, mode, fresh (s), grace (s), ttl, then parts to leave alone (their group is queued).
# Takes over the job's unfinished parts that no live worker holds: a part started by a
# worker whose heartbeat is gone (mode 'started': the parts of dead workers), and in mode
# 'all' also a part never started, or re-queued more than ``fresh`` seconds ago (a stalled
# job whose messages were lost). Each part taken is marked ``requeued:<now>`` as its
# runner, so no other janitor takes it again while its new message waits; if any was
# taken, the deadline moves to at least now + grace (a job is not failed while its tiles
# are being redelivered). Returns the parts taken (none for an ended job).
TAKE_ORPHANS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'processing' then return {} end
local now = tonumber(ARGV[1])
local all = ARGV[2] == 'all'
local fresh = tonumber(ARGV[3])
local leave = {}
for i = 6, #ARGV do leave[ARGV[i]] = true end
local done = {}
for _, part in ipairs(redis.call('SMEMBERS', KEYS[3])) do done[part] = true end
local runners = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do runners[flat[i]] = flat[i + 1] end
local live = {}
local taken = {}
for p = 0, tonumber(redis.call('HGET', KEYS[1], 'parts')) - 1 do
  local part = tostring(p)
  if not done[part] and not leave[part] then
    local runner = runners[part]
    local orphan = false
    if runner == nil then
      orphan = all
    else
      local since = string.match(runner, '^requeued:(.+)$')
      if since then
        orphan = all and now - tonumber(since) > fresh
      else
        local worker = string.match(runner, '^(.*):%d+$') or runner
        if live[worker] == nil then
          local expires = redis.call('ZSCORE', KEYS[4], worker)
          live[worker] = expires ~= false and expires ~= nil and tonumber(expires) >= now
        end
        orphan = not live[worker]
      end
    end
    if orphan then
      redis.call('HSET', KEYS[2], part, 'requeued:' .. ARGV[1])
      taken[#taken + 1] = p
    end
  end
end
if #taken > 0 then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
  local until_ = now + tonumber(ARGV[4])
  if tonumber(redis.call('HGET', KEYS[1], 'deadline')) < until_ then
    redis.call('HSET', KEYS[1], 'deadline', until_)
    redis.call('ZADD', KEYS[5], 'XX', until_, KEYS[1])
  end
end
return taken
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
