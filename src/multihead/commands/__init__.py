"""One module per ``multihead`` verb; each provides ``configure(parser)`` and ``run(args)``.

The library code the commands call lives in ``train/``, ``viz/``, ``tasks/`` and the rest of
the package; nothing here is imported by the library.
"""
