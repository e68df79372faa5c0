"""The long-running daemon (`ckptwatch watch`). The main process never imports
TensorFlow: checkpoints are read by worker processes (ckptwatch.worker).

    model.py       domain types shared by the parts below (no behaviour)
    events.py      watchdog handler: filesystem events -> `Touched` on a queue
    discovery.py   which checkpoints a directory holds, and whether one is completely written
    stability.py   settle clocks: how long files have been unchanged
    scheduler.py   per-watch queues in step order, watches taking turns, coalescing
    pipeline.py    each candidate's life: pending, queued, in flight, done / skipped / lost
    holding.py     a committed checkpoint's files held open until its verdict (deletion races)
    recorder.py    what the pipeline's events become: state, metrics, watch status, log, publish_dir;
                   the baseline rule (only a passing checkpoint becomes "previous") and acceptances
    watch_status.py  a watch's status (metrics, status page) from its latest report
    summary.py     a report's summary for lists (API, status page): bounded findings, drift, counts
    jobs.py        worker settings and each candidate's VerifyRequest ("previous" resolution)
    supervisor.py  worker processes: spawn, jobs, heartbeats, timeouts, restarts
    state.py       SQLite state (reports, skips) in state_dir; reports_kept applied on insert
    baselines.py   the state's baselines: "previous" per watch, every fingerprint, what publish_dir names,
                   the acceptances `ckptwatch accept` records and the daemon applies
    metrics.py     Prometheus collector over a Snapshot, counters, histogram
    http.py        /metrics /healthz /livez /readyz / /checkpoints/{id} /api/v1/watches
                   /api/v1/checkpoints[/{id}]
    page.py        the HTML of the status page and the per-checkpoint pages (inline CSS and SVG)
    serving.py     the HTTP server under them: one event-loop thread, a pool of 4, shared /metrics renderings
    logs.py        structlog set-up
    notify.py      sd_notify
    publish.py     the "latest verified" state file in publish_dir
    app.py         the Daemon: main loop, signals, reload, start and stop
"""
