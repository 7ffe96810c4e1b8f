"""The study layer on the engine (mnemonics_lib): run specs and grids, the results ledger,
dispatch, tables, figures and the notebooks' narration."""
