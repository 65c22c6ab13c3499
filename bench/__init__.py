"""``make bench``: the speed of prospect, measured on a real stack (issue 7).

``python -m bench`` starts its own nats-server and services as separate processes (temp
data dirs, free ports), runs the scenarios below against them, prints a table and, as the
very last line of stdout, one JSON object with every figure. Progress goes to stderr.

======================  ====================================================================
module                  scenario
======================  ====================================================================
:mod:`bench.submit`     SubmitCampaign round trip from 8 clients (own channel each)
:mod:`bench.progress`   report published by a worker -> update received by a watcher
:mod:`bench.sse`        the same over the web process's Server-Sent Events; RSS of the web
                        process with 1,000 event streams open
:mod:`bench.throughput` completed campaigns and leads per second, peak RSS, CPU per process
                        (and per campaign: ``jobs_cpu_ms_per_campaign`` ...)
:mod:`bench.loaded`     report -> watcher latency with campaigns offered at 70% of the
                        throughput measured (``progress_loaded_p99_ms``)
:mod:`bench.bus_only`   the throughput campaigns' messages on JetStream alone, no database
                        and no gRPC (``bus_only_campaigns_per_s``): what the rest reads against
:mod:`bench.watchers`   10,000 WatchJob streams on one jobs replica: its RSS, update p99
                        and how every stream ended (``watchers_10k_*``)
:mod:`bench.grpc_only`  the same streams and as many snapshots on a bare grpc.aio server
                        (``grpc_only_watchers_10k_*``): the floor the watchers read against
:mod:`bench.large_tables` PostgreSQL only: reads and the retention purge with 1,000,000 jobs
                        and 10,000,000 leads (``large_*``)
:mod:`bench.observability` the same with metrics served and scraped and every campaign
                        traced to a local OTLP receiver (:mod:`bench.otlp_sink`), against off
:mod:`bench.replicas`   the same with two jobs replicas sharing the report partitions,
                        against one (``replicas_2_jobs_cpu_ratio``)
:mod:`bench.speedup`    one 10-lead campaign at 300 ms a call vs :mod:`bench.sequential`
:mod:`bench.scaleout`   enrichment throughput with two enrichment workers over one
:mod:`bench.ratelimit`  Hunter calls per second against a fake that enforces R/s
:mod:`bench.webhooks`   a finished job -> its signed webhook at a receiver (``webhook_p99_ms``)
:mod:`bench.schedules`  a schedule's fire time -> its job made, during throughput
                        (``schedule_lateness_p99_ms``)
======================  ====================================================================

:mod:`bench.runner` orders them on one stack, swapping worker processes (with per-process
settings) between scenarios instead of restarting everything. Environment:

- ``BENCH_QUICK=1``: shortened run (under a minute in all).
- ``BENCH_DATABASE_URL``: run the jobs service on this database (e.g. PostgreSQL); use a
  throwaway one, the bench leaves its jobs there.
- ``BENCH_INFLIGHT``: campaigns kept in flight in the throughput scenario (default 64).
- ``BENCH_RATELIMIT_RPS`` / ``BENCH_RATELIMIT_BURST``: the fake Hunter's limit (20 / 5).
"""
