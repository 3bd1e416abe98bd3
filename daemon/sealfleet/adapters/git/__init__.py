"""Reading GitOps working trees (never writing them).

``globs`` compiles the ``paths`` patterns of a ``[[repos]]`` entry, ``walking`` lists a
tree's files (``git ls-files`` when it is a git work tree, a plain walk otherwise) with
the signatures that tell a changed file from an unchanged one, and ``manifests`` turns
one file into its SealedSecret documents.  Nothing here imports the rest of the
adapters, so the config can validate patterns with ``globs`` alone.
"""
