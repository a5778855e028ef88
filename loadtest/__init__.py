"""``fusionserve loadtest``: an open- and closed-loop load generator with reports and plots.

Pure parts (:mod:`loadtest.stats`, :mod:`loadtest.schedule`) are tested on known inputs;
:mod:`loadtest.runner` drives the :class:`client.AsyncClient` against one server URL.
"""
