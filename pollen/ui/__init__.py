"""The web dashboard and control API (the ``ui`` extra: FastAPI + uvicorn; docs/dashboard.md).

``pollen ui [RUNS_DIR]`` serves the run folders (finished and running simulations, and starting a
new one from a config); ``pollen simulate --ui-port P`` and ``pollen server --ui-port P`` serve a
live federation with its controls. The page is plain HTML/JS served by the package with a
vendored uPlot; it holds no run logic: it reads run folders and the live feed
(``pollen.telemetry.live``) and posts commands to ``pollen.server.control``.
"""
