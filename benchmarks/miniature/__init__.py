"""The StateX miniature: can state expansion beat plain continued training when the state is what limits recall?

``data`` builds the recall rows, ``settings`` sizes a run and names its arms, ``units`` runs one
pretraining or one continuation (on the shipped path: ``posttrain``, ``statex-hf convert``,
``statex-hf eval``), ``run`` schedules the units (in parallel, resumable), ``report`` writes the tables
and plots. ``benchmarks/reproduce_statex.py`` is the command line.
"""
