"""The daemon: task loading (tasks/), the engine (engine/), agents (agents/), sandboxes
(sandbox/) and serving (serving/), in that order of data flow; `python -m daemon` runs it."""
