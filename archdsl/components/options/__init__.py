"""Stage options: what a stage adds to some of its blocks, each a ``components.StageOption`` in
``STAGE_OPTIONS``: GrafT's graft branch (``graft``) and CPVT's positional encoding generator
(``position``: ``peg``)."""
