-- refuse: record a start or activation that the edge refused from PostgreSQL (DEVICE_LIMIT_REACHED,
-- DEVICE_CHANGE_LIMIT_REACHED, a license refusal the plane's cache did not know yet) as one `refused`
-- event of the license's shard, like the refusals start.lua records itself (record_refusal).
-- KEYS: 1 the shard's event stream
-- ARGV: 1 license id, 2 refusal code, 3 device id ('' = none), 4 fingerprint, 5 operation
--       ('start' | 'activate'), 6 stream max length
-- Reply: the entry id.
local now = now_ms()
return append_event(KEYS[1], ARGV[6],
  'k', 'refused', 'l', ARGV[1], 'c', ARGV[2], 'd', ARGV[3], 'f', ARGV[4], 'at', now, 'o', ARGV[5])
