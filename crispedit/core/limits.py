"""Upper bounds that keep a recipe from exhausting the machine before any work starts.

A recipe is data anyone can write, so its numbers are bounded where they size memory:
the item count (and with it the shard plan), per-image fan-out and shard sizes. The
bounds sit far above any real build (the largest published editing sets have a few
million pairs) and far below what would stall planning on a laptop.
"""

from __future__ import annotations

#: Most items one build may have.
MAX_ITEMS = 10**9
#: Most shards one build may be planned in (each a small object on the driver, and a commit marker).
MAX_SHARDS = 1_000_000
#: Most items one shard may hold (a shard is built in one worker's memory).
MAX_SHARD_SIZE = 100_000
#: Most items one source record (an image) may become, and most children (candidates) one sample may have.
MAX_FAN_OUT = 10_000
