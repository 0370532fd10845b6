-- reap: end the sessions of one shard whose deadline has passed, as timeout.
-- KEYS: 1 shard deadline index, 2 shard event stream
-- ARGV: 1 shard base 'hl:{sN}:', 2 most sessions to end in this call, 3 stream max length
-- Reply: number of sessions ended.
-- Index members are '<license id>:<token>'; an entry whose session is gone is dropped.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local ended = 0
for _, member in ipairs(due) do
  local sep = string.find(member, ':', 1, true)
  if sep then
    local license_id = string.sub(member, 1, sep - 1)
    local token = string.sub(member, sep + 1)
    local base = ARGV[1] .. 'L' .. license_id .. ':'
    if end_session(base, license_id, token, 'timeout', now, KEYS[1], KEYS[2], ARGV[3]) > 0 then
      ended = ended + 1
    end
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return ended
