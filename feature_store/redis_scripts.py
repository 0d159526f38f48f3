"""The Lua scripts of ``redis_store``: each runs as one atomic step on the Redis server.

Key names are described in ``redis_store``. Every script takes the key prefix as ``ARGV[1]``. Log
entries are JSON arrays ``[seq, user, item, event, timestamp]``, the event ``''`` when it has none
and the timestamp a decimal string, as it arrived (Lua's numbers are doubles).
"""

from __future__ import annotations

from feature_store import definitions as D

DEFAULT_LAST_N = D.FeatureConfig().last_n

# The incremental state update, shared by apply_event and the replay of a load; ``prepare`` brings a
# store written before the log had sequence numbers (a ``p:events`` list, a ``p:version`` pointer)
# to today's keys, and gives a new store one empty live version, so events are readable before any
# load.
_PRELUDE = """
local function apply(p, v, user, item, event, ts, max_seen)
  local base = p .. ':' .. v
  local key = base .. ':r:' .. user
  local raw = redis.call('GET', key)
  local r
  if raw then
    r = cjson.decode(raw)
  else
    r = {n_events = 0, n_items = 0, price_sum = '0', price_n = 0, events = {}, categories = {},
         last_items = {}, seen = ''}
  end
  local last_n = tonumber(redis.call('HGET', base .. ':meta', 'last_n') or 'DEFAULT_LAST_N')
  r.n_events = r.n_events + 1
  if not string.find(r.seen .. SEP, SEP .. item .. SEP, 1, true) then
    r.seen = r.seen .. SEP .. item
    r.n_items = r.n_items + 1
    local _, n_seen = string.gsub(r.seen, SEP, '')
    while n_seen > max_seen do  -- drop the oldest: the seen list is bounded (record.seen_cap)
      local second = string.find(r.seen, SEP, 2, true)
      r.seen = string.sub(r.seen, second)
      n_seen = n_seen - 1
    end
  end
  if r.last_ts == nil or tonumber(ts) > tonumber(r.last_ts) then r.last_ts = ts end
  if event ~= '' then r.events[event] = (r.events[event] or 0) + 1 end
  local meta = redis.call('HMGET', base .. ':i:' .. item, 'category', 'price')
  if meta[1] then r.categories[meta[1]] = (r.categories[meta[1]] or 0) + 1 end
  if meta[2] then
    r.price_sum = string.format('%.17g', tonumber(r.price_sum) + tonumber(meta[2]))
    r.price_n = r.price_n + 1
  end
  local last = r.last_items
  last[#last + 1] = item
  while #last > last_n do table.remove(last, 1) end
  redis.call('SET', key, cjson.encode(r))
end
local function log(p, user, item, event, ts)
  local seq = redis.call('INCR', p .. ':seq')
  redis.call('ZADD', p .. ':log', seq, cjson.encode({seq, user, item, event, ts}))
  return seq
end
local function prepare(p)
  local old = redis.call('GET', p .. ':version')
  if old then
    redis.call('SADD', p .. ':ids', old)
    redis.call('HSET', p .. ':names', 'legacy', old)
    redis.call('HSET', p .. ':' .. old .. ':meta', 'name', 'legacy')
    redis.call('DEL', p .. ':version', p .. ':cutoff')
  end
  if redis.call('EXISTS', p .. ':events') == 1 then
    for _, raw in ipairs(redis.call('LRANGE', p .. ':events', 0, -1)) do
      local e = cjson.decode(raw)
      log(p, e[1], e[2], e[3], e[4])
    end
    redis.call('DEL', p .. ':events')
  end
  if redis.call('EXISTS', p .. ':next_version') == 0 then
    local v = redis.call('INCR', p .. ':next_version')
    redis.call('SADD', p .. ':ids', v)
    redis.call('HSET', p .. ':names', 'initial', v)
    redis.call('HSET', p .. ':' .. v .. ':meta', 'name', 'initial')
  end
end
""".replace("DEFAULT_LAST_N", str(DEFAULT_LAST_N)).replace("SEP", "'\\031'")

PREPARE = _PRELUDE + "prepare(ARGV[1])\n"

# ARGV: prefix, user, item, event, timestamp, max_seen. Returns the event's sequence number.
APPLY_EVENT = (
    _PRELUDE
    + """
local p = ARGV[1]
prepare(p)
local seq = log(p, ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local max_seen = tonumber(ARGV[6])
for _, v in ipairs(redis.call('HVALS', p .. ':names')) do
  apply(p, v, ARGV[2], ARGV[3], ARGV[4], ARGV[5], max_seen)
end
return seq
"""
)

# One step of a load's replay. ARGV: prefix, version id, last sequence number replayed, chunk size,
# the snapshot's events_through, max_seen. Applies the next chunk of logged events in timestamp order
# (ties by arrival) and returns {'more', last seq}; with less than a chunk left, also makes the version
# live under the name in its meta (replacing a live version of that name) and returns {'live', old id
# or ''}. {'stale', pruned} when the log was pruned past the snapshot.
REPLAY = (
    _PRELUDE
    + """
local p, v, done, chunk, through = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_seen = tonumber(ARGV[6])
prepare(p)
local pruned = tonumber(redis.call('GET', p .. ':pruned') or '0')
if pruned > through then return {'stale', pruned} end
local events = {}
for i, raw in ipairs(redis.call('ZRANGEBYSCORE', p .. ':log', '(' .. done, '+inf', 'LIMIT', 0, chunk)) do
  events[i] = cjson.decode(raw)
end
if #events > 0 then done = events[#events][1] end
table.sort(events, function(a, b)
  local ta, tb = tonumber(a[5]), tonumber(b[5])
  if ta ~= tb then return ta < tb end
  return a[1] < b[1]
end)
for _, e in ipairs(events) do apply(p, v, e[2], e[3], e[4], e[5], max_seen) end
if #events == chunk then return {'more', done} end
local name = redis.call('HGET', p .. ':' .. v .. ':meta', 'name')
local old = redis.call('HGET', p .. ':names', name)
redis.call('HSET', p .. ':names', name, v)
return {'live', old or ''}
"""
)

# ARGV: prefix, through. Deletes the logged events up to ``through`` and remembers the mark.
PRUNE = """
local p, through = ARGV[1], tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', p .. ':log', '-inf', through)
if through > tonumber(redis.call('GET', p .. ':pruned') or '0') then
  redis.call('SET', p .. ':pruned', through)
end
"""

# Reads: resolve the version's name ('' = the newest live version) to its id; an unknown name is an
# error reply, no live version at all an empty answer.
_RESOLVE = """
local p, name = ARGV[1], ARGV[2]
local v
if name == '' then
  for _, id in ipairs(redis.call('HVALS', p .. ':names')) do
    if not v or tonumber(id) > tonumber(v) then v = id end
  end
  if not v then return {} end
else
  v = redis.call('HGET', p .. ':names', name)
  if not v then return redis.error_reply('UNKNOWN_VERSION') end
end
"""

# ARGV: prefix, version name, user ids. Records as JSON ('' for unknown users).
GET_USERS = (
    _RESOLVE
    + """
local base = p .. ':' .. v .. ':r:'
local out = {}
for i = 3, #ARGV do out[#out + 1] = redis.call('GET', base .. ARGV[i]) or '' end
return out
"""
)

# ARGV: prefix, version name, item ids. Item rows as JSON ('' for unknown items).
GET_ITEMS = (
    _RESOLVE
    + """
local base = p .. ':' .. v
local out = {}
for i = 3, #ARGV do out[#out + 1] = redis.call('HGET', base .. ':i:' .. ARGV[i], 'row') or '' end
return out
"""
)

# ARGV: prefix, version name. The version's id (for ``put``).
RESOLVE = _RESOLVE + "return {v}\n"
