"""When campaigns fire: the campaign file's ``schedule:`` turned into tick times, and those ticks fired.

The database is the state of record: a run is keyed by (campaign, scheduled time), so firing a tick is exactly
``orchestrator run FILE --at <tick>`` and firing it again continues that run instead of starting a second one.
Tick times are a pure function of the schedule (APScheduler's triggers compute them; ``every:`` lies on a fixed
grid anchored at ``start`` or at 2000-01-01 00:00 in the schedule's zone), so every process, before and after a
restart, computes the same ticks and therefore the same run keys.

Modules, one job each:

* ``triggers`` - the APScheduler trigger of a schedule, ``ticks(schedule, start, end)`` and the schedule in words;
* ``audiences`` - whose tick it is: birthdays and membership anniversaries on the tick's date, paid orders and
  sign-ups that no earlier check of the campaign answered (the ledger is the events' watermark);
* ``misfire`` - which missed ticks still fire (``misfire: skip | latest | catch_up`` and ``misfire_grace``);
* ``campaign_files`` - every campaign file of the campaigns folder, loaded or with its problems;
* ``replay`` - fire every tick of every enabled campaign in a time range, in time order (backtesting);
* ``listing`` - each campaign's schedule, next fire times and last run (``orchestrator schedule``);
* ``lease`` - one leader among several scheduler processes on one database (a lease row renewed by heartbeat);
* ``sqlite_lock`` - on SQLite, a file lock held for the scheduler's lifetime: the kernel drops it when the process
  dies, so a restart after a crash takes the lease over at once;
* ``reload`` - the campaigns folder polled by content hash, keeping the last valid version of an invalid file;
* ``service`` - the long-running loop (``orchestrator scheduler``): fires due ticks while it holds the lease,
  applies the misfire rule after downtime, dispatches what is due, reloads (docs/scheduler.md).
"""
