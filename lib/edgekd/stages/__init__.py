"""One module per pipeline stage (data, train, evaluate with external, robustness, efficiency, export, aggregate),
and the aggregate's parts: runs (who each run is), tables, figures, overview (the data stage's summary)."""
