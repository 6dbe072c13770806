"""``giellm mre``: the paper's Mutual Reinforcement Effect experiment as one command.

One model trained on the mix of tasks against one model per task trained on that task alone,
with the same recipe and seeds, each scored on the same test rows; the answer is
``OUTPUT/mre.json``, ``mre.md`` and ``mre.png``. :mod:`.plan` decides which runs there are (pure),
:mod:`.runner` trains and scores them through the public train/score drivers (resumable),
:mod:`.report` turns scored counts into the comparison (pure), :mod:`.cli` registers the command
(``jobs/mre.py`` runs the same handler under ``ray job submit``).
"""
