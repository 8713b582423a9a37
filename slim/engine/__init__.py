"""The shared trainer and what surrounds it: one training loop for every task, checkpoints, schedules,
reproducible data loading, hooks, weights loading. It imports no task: the commands that pick a task live in
slim/apps/."""
