"""`tbhud`'s sub-commands, one module per group, each with `register(subparsers)`:

    runs.py     run, start, stop (and following a run's progress, shared by them)
    suite.py    load, status, events
    history.py  history, show, compare
    daemon.py   daemon (start / stop / status: the daemon's own entry, `python -m daemon`)
    hud.py      hud (attach)

Shared pieces (exit statuses, client-side errors, connecting) are in common.py. Nothing here
imports daemon code except where the daemon's own code runs in this process (`tbhud run`
without a daemon, `tbhud daemon`, the local history), and then inside the function.
"""
