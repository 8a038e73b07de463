"""The node state engine and Slurm bridge (`shoal state`).

Per node it keeps what should be (configured/desired: image, power, frozen) and what is
(discovered: alive, image, supervisord programs, Slurm state and reason, last heartbeat), pushes
discovered failures into Slurm at once, and drives nodes through declared transitions towards
their desired state. Node events are pushed by a supervisord event listener on every node.

This package never imports the virtual-cluster package (shoal.cluster): everything that depends
on where the nodes are (power, image swap, seeing a PID 1 die) comes in through a `Backend`, so a
real site runs the same engine against its own nodes with scontrol alone.

    model.py       records, phases, health
    store.py       SQLite (WAL) persistence
    bridge.py      Slurm bridge: scontrol updates batched into host lists
    backend.py     what a site or the virtual cluster provides (Backend protocol, PlainBackend)
    transitions.py the declared transitions (per module: from, to, requires, timeout, on failure)
    engine.py      the engine: discovery in, transitions and Slurm updates out
    auth.py        munge credentials and unix-socket peer credentials
    openapi.py     the API's OpenAPI schema
    api.py         the HTTP API (aiohttp): /cfg, /dsc, /nodes, /graph, /events (SSE), /metrics
    service.py     `shoal state serve`: wiring of the above
    client.py      the CLI's client of the API (stdlib only)
"""
