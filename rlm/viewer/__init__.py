"""The trajectory viewer: a run's events as a timeline and a tree, in the browser.

``rlm view FILE`` serves one trajectory file (:mod:`rlm.viewer.server`, reading it
through :mod:`rlm.viewer.index`); ``rlm serve`` serves the same page for a tenant's
own runs (:mod:`rlm.viewer.service_routes`). The page is static HTML, CSS and
JavaScript in ``static/``: no build step.
"""
