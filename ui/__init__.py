"""Streamlit glue for the pages: session state, the scan catalogue, cached resources and widgets.

Split by concern: :mod:`ui.state` (the one typed object pages pass along), :mod:`ui.catalogue` (samples and
uploads), :mod:`ui.resources` (models, stores and cached pipeline results), :mod:`ui.widgets` (reusable
controls), :mod:`ui.heap` (garbage collection in the serving process). Nothing here computes: every number
comes from :mod:`segcore`.
"""
