"""companion: the tested training utilities behind the course "Transfer Learning vs Multi-task Learning".

Three layers, each importing only from the ones below it (checked by `lint-imports`, see pyproject.toml):
- the core library, the modules at this level: device (device choice, seeds), checks (input checks, one
  message style), files (atomic writes, where the checkout lives); store (the data folder, checksums, fetching),
  data (datasets, multi-task sets, the text set), text (sentence embeddings), batches, synthetic; models, train
  (fit), loop (fit's step and loops, the Balancer and Callback contracts), evaluation, plugins, optim,
  checkpoints, distributed (fit under torchrun); transfer, sources (cached source models), dann,
  transferability; mtl (architectures), balancers, aggregators, objectives, affinity;
- `companion.experiments`: experiment runners built on the core: runners (sweeps and comparisons), strategies,
  mismatch, regimes, sweeps, auxiliary, weighting, protocol (fair comparisons, Delta_m) and verdicts;
- `companion.course`: the course's tooling: params (notebook parameters), catalog (the notebooks), runner and
  runs (executing notebooks), tables, claims, summary, editions, workshop, provenance, infographic, advice,
  plots, and the command line (cli, run by `python -m companion`).

Import each name from the module that defines it (`from companion.train import fit`). Importing this package
imports nothing else, so `python -m companion --help` starts without loading torch.
"""
