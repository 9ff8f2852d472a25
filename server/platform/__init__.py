"""Platform: DataExec's registration with the platform that sends it code.

Owns the small protocol of docs/platform.md: register at start, heartbeat (health,
version, capacity, pools), retry with capped exponential backoff and jitter while the
platform is down, goodbye at shutdown (bounded). Only its own HTTP client calls, never a
route of ours; nothing here waits on the platform before serving.

May import: config, errors, clock. Never tornado.web, sessions or kernels (the runtime hands
in the state to report as a callable).
"""

from server.platform.registration import PlatformLink, platform_problems

__all__ = ["PlatformLink", "platform_problems"]
