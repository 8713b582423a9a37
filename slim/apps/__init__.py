"""Applications built on the engine and the tasks: commands that choose and drive tasks."""
