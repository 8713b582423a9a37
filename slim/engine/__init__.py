"""The shared trainer and what surrounds it: one training loop for every task, checkpoints, schedules,
reproducible data loading, hooks, and the helpers behind the command-line tools."""
