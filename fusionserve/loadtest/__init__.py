"""``fusionserve loadtest``: an open- and closed-loop load generator with reports and plots.

Pure parts (:mod:`fusionserve.loadtest.stats`, :mod:`fusionserve.loadtest.schedule`) are tested
on known inputs; :mod:`fusionserve.loadtest.runner` drives the
:class:`fusionserve.client.AsyncClient` against one server URL.
"""
