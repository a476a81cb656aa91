"""Streamlit glue for the pages: session state, the scan catalogue, cached resources and widgets.

Split by concern: :mod:`ui.state` (the one typed object pages pass along), :mod:`ui.catalogue` (samples and
uploads), :mod:`ui.resources` (models, stores and cached pipeline results), :mod:`ui.widgets` (reusable
controls). Nothing here computes: every number comes from :mod:`segcore`.
"""
