"""The study engine: it schedules the stages and knows nothing of their insides.

worldrep has two layers. Stages (world, tasks, data, model, train, evaluate, analysis) are
plain functions from a spec and input artifacts to an artifact directory. This package is the
engine on top of them:

- `load`: study files expanded into a graph of steps (`grid`: grids and templates);
- `kinds`: step kinds, the adapters from a step's spec to its stage function; the engine
  asks a kind what it declares (does it pack, is it data, where its Slurm job goes), never
  its name;
- `identity`: what a step's name stands for (spec, inputs and the source of its code);
- `cache`: which steps are done, due (and why), running, failed;
- `locks`: one runner per step;
- `units`: which steps run together (packs of training runs, Slurm jobs);
- `runner`: the worker side: run one unit of steps into its artifact directories;
- `executors`: the scheduler; `backends`: where it runs units (in process, worker
  processes, Slurm through submitit; `squeue`: following Slurm jobs without accounting);
- `report`: the HTML page and findings of a study.
"""

from .load import Step, Study, load_study

__all__ = ["Step", "Study", "load_study"]
