-- end: end one session of a license with a reason (client end, admin).
-- KEYS: 1 shard deadline index, 2 shard event stream, 3 shard live count
-- ARGV: 1 license id, 2 license base 'hl:{sN}:L<id>:', 3 token, 4 end reason, 5 stream max length
-- Reply: 1 when the session was live and is now ended with the reason; 0 when it was not live, or had
--        already timed out (then it is ended as timeout, which is the truth).
local shard = {deadlines = KEYS[1], events = KEYS[2], count = KEYS[3], maxlen = ARGV[5]}
if end_session(ARGV[2], ARGV[1], ARGV[3], ARGV[4], now_ms(), shard) == 1 then
  return 1
end
return 0
