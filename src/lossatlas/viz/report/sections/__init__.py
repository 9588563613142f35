"""Report sections: one module per kind of result. Every module here is imported by
:func:`lossatlas.viz.report.registry.load_sections` and registers its builders with ``@register`` /
``@register_artifact``; add a file to add a section."""
