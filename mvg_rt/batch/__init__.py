"""``mvg-rt batch``: a worklist of cases, each simulated into its own all-or-nothing folder, resumable.

Modules, one job each: ``worklist`` (format, parsing, validation), ``settings`` (a case's simulate
settings), ``plan`` (settings hash, resume), ``case`` (one case on an opened runtime), ``local`` and
``ray_executor`` (where cases run), ``summary`` and ``progress`` (what the user sees), ``job`` (the order).
"""
