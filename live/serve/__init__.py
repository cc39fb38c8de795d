"""``live serve``: the web page, its control websocket, one pipeline per WebRTC peer.

``server`` (lifecycle, websocket loop, message handlers) sits on ``http`` (the
token/Origin/static gate), ``protocol`` (what a message may say), ``session``
(what a session owns and closes), ``uploads``, ``media`` (the names a client
may give files: upload ids and ``--media-dir`` names, never paths),
``admission`` (whether the machine has room for one more video session) and
``peer`` (the only module here that imports aiortc, loaded when a browser
first offers video). Sessions run in worker processes (``workers``,
``worker_main``) or, with ``--cluster``, Ray actors (``cluster``), their SAM 2
then on a Ray Serve deployment (``sam2_serve``); only those two import Ray.
"""
