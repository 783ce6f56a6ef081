"""The course tooling: notebook parameters, the notebook runner and its records, claims, editions, provenance,
the infographic, advice, plots and the command line. Imports the core and the experiments."""
