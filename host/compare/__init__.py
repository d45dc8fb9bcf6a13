"""``dflare compare``: one model on several targets and delegates, compared pairwise.

``columns`` runs the columns and compares their outputs, ``search`` runs the DFlare search between
the columns of each pair (``--search``), ``html`` renders the page.
"""
