"""``giellm demo``: the whole job on one CPU machine (``run``), and its command line (``cli``)."""
