"""Plan, run and record a profile: stage table and expansion, execution, progress, provenance, publication."""
