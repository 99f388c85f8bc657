"""``compleak import``: artifacts built elsewhere become a run with the same manifest, splits and threat model as a
built one (docs/import.md). ``stage.import_run`` runs the steps; a module per job beside it."""
