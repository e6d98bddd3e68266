"""Prefect flows that compose eakd's stages, the pipeline config, and the ``eakd`` CLI.

Library code (``distill/``, ``compress/``) never imports Prefect; this package wraps the stage
functions as tasks and flows.
"""

import os

from distill.config import eakd_home

# Prefect reads these at import: keep its database per eakd home (a database written by another
# Prefect version breaks start-up) and forward the library loggers to the Prefect run logs.
os.environ.setdefault("PREFECT_HOME", str(eakd_home() / "prefect"))
# persisted task results (the stage cache) live beside that database, not in ~/.prefect/storage (Prefect's
# default whatever PREFECT_HOME says), so a test's or a user's eakd home has its own stage cache
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", os.path.join(os.environ["PREFECT_HOME"], "storage"))
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "distill,compress,flows")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_UI_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")  # Prefect's local API: loopback only (its default, pinned)
# the local API server starts in ~5 s on an idle 2-core machine, but Prefect gives up after 20 s, which a
# busy machine (a vLLM engine beside it) overruns; a slow start is not an error
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
