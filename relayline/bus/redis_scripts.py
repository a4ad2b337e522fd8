"""Lua scripts of :mod:`relayline.bus.redis_streams`, each run atomically by Redis.

All take ``KEYS = [stream, counter, epoch]`` of one topic and ``ARGV[1]`` (ttl of the counter
and epoch keys, ms) and ``ARGV[2]`` (age cutoff, ms since the Unix epoch; older entries are
expired). Stream entry ids are ``<epoch>-<seq>`` and entry fields are ``t`` (ts) then ``f``
(frame), in that order: the scripts read them by position.

- ``PUBLISH``: append a batch with contiguous seqs, splicing each seq into its pre-encoded frame.
- ``READ``: epoch, last seq and the retained entries after a seq.
- ``POSITION``: epoch and last seq; given the ``(epoch, seq)`` a reader had already delivered,
  it also replaces a log that went backwards (restored from an older snapshot, e.g. the last
  second of an AOF lost in a crash), whose seqs would otherwise be reused for new events.
- ``RETIRE``: replace the log with a new one (new epoch) and tell every reader, through the
  bus's resync stream ``KEYS[4]``, to re-check the topic: used after a publish whose outcome is
  unknown, so that no reader can take the old log for complete.

Every script first opens the log, creating it (new epoch) if it is missing or half missing.
"""

from __future__ import annotations

# Shared by all scripts.
PRELUDE = """
local stream, counter, epoch_key = KEYS[1], KEYS[2], KEYS[3]
local meta_ttl, cutoff = ARGV[1], tonumber(ARGV[2])

local function open_log()
  local epoch = redis.call('GET', epoch_key)
  local last = redis.call('GET', counter)
  if tonumber(epoch) and tonumber(last) then return epoch, tonumber(last) end
  -- Half of the log's identity is gone, so its history can't be trusted: start a new log.
  -- Its epoch sorts after the old one because it is the ms part of entry ids: a reader's
  -- cursor in the old log must not hide the new log's entries.
  local t = redis.call('TIME')
  local base = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = epoch and tonumber(epoch)
  if old and old >= base then base = old + 1 end
  epoch = string.format('%d', base)
  redis.call('DEL', stream)
  redis.call('SET', epoch_key, epoch, 'PX', meta_ttl)
  redis.call('SET', counter, '0', 'PX', meta_ttl)
  return epoch, 0
end

-- Drop expired entries from the head, looking at a bounded number per call (the reader side
-- filters whatever is left). Entry fields are {'t', ts_ms, 'f', frame}.
local function trim_age()
  -- The common case (oldest entry still fresh) costs one single-entry read.
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) >= cutoff then return end
  head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
  local n = #head
  for i = 2, n do
    if tonumber(head[i][2][2]) >= cutoff then
      redis.call('XTRIM', stream, 'MINID', head[i][1])
      return
    end
  end
  local id = head[n][1]
  local dash = string.find(id, '-', 1, true)
  local next_seq = tonumber(string.sub(id, dash + 1)) + 1
  redis.call('XTRIM', stream, 'MINID', string.sub(id, 1, dash) .. string.format('%d', next_seq))
end
"""

# ARGV[3]: max events, ARGV[4]: stream ttl (ms), then (frame head, frame tail, ts) per event.
PUBLISH = (
    PRELUDE
    + """
local epoch, last = open_log()
trim_age()
local first = last + 1
for i = 5, #ARGV, 3 do
  last = last + 1
  local seq = string.format('%d', last)
  redis.call('XADD', stream, 'MAXLEN', ARGV[3], epoch .. '-' .. seq,
             't', ARGV[i + 2], 'f', ARGV[i] .. seq .. ARGV[i + 1])
end
redis.call('SET', counter, string.format('%d', last), 'PX', meta_ttl)
redis.call('PEXPIRE', epoch_key, meta_ttl)
redis.call('PEXPIRE', stream, ARGV[4])
return {epoch, first}
"""
)

# ARGV[3]: after_seq, ARGV[4]: count. Returns {epoch, last, entries}.
READ = (
    PRELUDE
    + """
local epoch, last = open_log()
local after = tonumber(ARGV[3])
local entries = {}
if after < last then
  trim_age()
  local start = epoch .. '-' .. string.format('%d', after + 1)
  entries = redis.call('XRANGE', stream, start, '+', 'COUNT', ARGV[4])
end
return {epoch, last, entries}
"""
)

# ARGV[3]: an epoch and ARGV[4]: a seq this caller has already seen in it (or "" and 0).
POSITION = (
    PRELUDE
    + """
local epoch, last = open_log()
if epoch == ARGV[3] and last < tonumber(ARGV[4]) then
  redis.call('DEL', counter)
  epoch, last = open_log()
end
return {epoch, last}
"""
)

# KEYS[4]: the resync stream; ARGV[3]: the topic. Returns {epoch, last} of the new log.
RETIRE = (
    PRELUDE
    + """
redis.call('DEL', counter)
local epoch, last = open_log()
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'topic', ARGV[3])
return {epoch, last}
"""
)
