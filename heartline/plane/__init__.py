"""The Redis session plane: live sessions, deadlines, heartbeat and session-event streams.

`keys` owns the key layout, `events` the stream entry structs; the Lua scripts in `lua/` are the only
code that changes the plane, each wrapped by one typed function.
"""
