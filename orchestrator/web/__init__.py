"""The web service, ``orchestrator serve``: one-click unsubscribe, inbound SMS replies and e-mail events, coupon
checks for points of sale, health and metrics. One module per endpoint group; ``app.create_app`` puts them
together. Every endpoint is a plain (synchronous) function run in Starlette's thread pool, since the storage is
synchronous SQLAlchemy; all state is in the database, so any number of processes can serve behind a proxy."""
