"""GitOps repositories: reading working trees, and writing reseals on a branch of their own.

``globs`` compiles the ``paths`` patterns of a ``[[repos]]`` entry, ``walking`` lists a
tree's files (``git ls-files`` when it is a git work tree, a plain walk otherwise) with
the signatures that tell a changed file from an unchanged one, and ``manifests`` turns
one file into its SealedSecret documents.  None of these imports the rest of the
adapters, so the config can validate patterns with ``globs`` alone.  ``cli`` runs the git
command line (hermetic, credentials never in argv or logs) and ``writing`` commits a
reseal to a ``sealfleet/reseal-*`` branch from a private worktree: the user's working
tree is never written.
"""
