"""The web server beside the pipeline: a live page, ``/events``, ``/metrics`` and a drive browser.

Imported only by the commands that serve (``drivecap serve``, ``run --serve``, ``replay --serve``): the
pipeline itself knows only :class:`drivecap.web.feed.LiveFeed`, which needs no web library.
"""
