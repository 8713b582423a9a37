"""The demo and benchmark drivers of each task (`tools/demo.py`, `bench/*_gain.py`): they run the package's
own commands (slim/apps/commands.py) on the shipped configs and print tables."""
