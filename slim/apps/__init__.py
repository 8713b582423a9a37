"""Applications built on the engine and the tasks: commands that choose and drive tasks.

The folders depend in one direction: slim/distill (the distillation engine) <- slim/engine (the trainer)
<- slim/tasks, slim/depth (plug-ins) <- slim/apps (this folder) <- tools/, bench/.

    launch.py        flags, config loading with the task picked from the config, student and teacher, run
    train.py, distill.py, evaluate.py, predict.py, infer.py, export.py, list_layers.py, prune_layers.py,
    prepare_data.py, demo.py
                     one module per command (main(argv), cli()); tools/*.py and slim/distill/distill_train.py
                     run them, and so do the console scripts (cli.py)
    pipeline.py      stages of training from one yaml (distill_train.py --pipeline)
    suggest.py       suggested distillation pairs (list_layers --suggest)
    tools.py         what the inference commands share
    commands.py, experiments/   the demos' and benchmarks' drivers
"""
