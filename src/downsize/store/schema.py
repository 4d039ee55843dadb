"""Tables of the store (SQLAlchemy Core). Change them only through a new migration."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

exchanges = Table(
    "exchanges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(32), nullable=False),
    Column(
        "source", String(32), nullable=False
    ),  # gateway | openai-jsonl | cassettes | ... (the importer's name)
    Column("source_key", String(200), unique=True),  # idempotent imports: one row per source record
    Column("agent", String(200)),
    Column("session", String(200)),
    Column("task_hint", String(200)),
    Column("model", String(200)),
    Column("request", JSON, nullable=False),
    Column("response", JSON),
    Column("response_kind", String(16)),  # tool_call | text | json | error | empty
    Column("tool_names", Text),  # comma-separated names of the tools called, in order
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("latency_ms", Float),
    Column("upstream_status", Integer),
    Column("route", String(200)),  # upstream | specialist:<id> | fallback:<reason>
    Column("cost_estimate", Float),
    Column("is_hci", Boolean),  # a text reply to a human, not a machine-facing call
    Column("outcome", Float),  # workflow outcome reported later (1.0 = success)
    Column("split", String(8)),  # dev | test (splits.py)
    Column("workflow", String(200)),  # the unit of the split: session's workflow, else conversation root
    Column("split_rule", String(8)),  # source | hash | time: what placed the exchange in its split
)
Index("ix_exchanges_session", exchanges.c.session)
Index("ix_exchanges_source_split", exchanges.c.source, exchanges.c.split)
Index("ix_exchanges_workflow", exchanges.c.workflow)

specialists = Table(
    "specialists",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("task", String(200), nullable=False),
    Column("base_model", String(500), nullable=False),
    Column("adapter_path", Text, nullable=False),
    Column("config", JSON, nullable=False),
    Column("data_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # candidate | off | shadow | canary | live | retired
    Column("threshold", Float),
    Column("metrics", JSON),
    Column("created_at", String(32), nullable=False),
    Column("traffic", Float),  # canary: the share of the task's traffic it answers (m005_operations)
)

route_decisions = Table(
    "route_decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("exchange_id", Integer, ForeignKey("exchanges.id"), nullable=False),
    Column("specialist_id", Integer, ForeignKey("specialists.id")),
    Column("served", Boolean, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("confidence", Float),
    Column("threshold", Float),
    Column("candidate", Text),  # the specialist's generated call, served or not
    Column("latency_ms", Float),
)
Index("ix_route_decisions_exchange", route_decisions.c.exchange_id)

# -- curation (m002_curation) ------------------------------------------------------------------------

curation_runs = Table(
    "curation_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("config", JSON, nullable=False),  # the resolved CurateConfig
    Column("report", JSON),  # counts by reason, PII values masked by entity, timings
)

curated_exchanges = Table(
    "curated_exchanges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("curation_runs.id"), nullable=False),
    Column("exchange_id", Integer, ForeignKey("exchanges.id"), nullable=False),
    Column("kept", Boolean, nullable=False),
    Column("reason", String(32)),  # why it was removed (error, empty, refused, hci, ...); null when kept
    Column("is_hci", Boolean),  # a text reply to a human (flagged whether kept or not)
    Column("request", JSON),  # masked copy, stored for kept exchanges only
    Column("response", JSON),
    Column("pii", JSON),  # distinct values masked in this exchange's conversation, by entity
)
Index("ix_curated_run_kept", curated_exchanges.c.run_id, curated_exchanges.c.kept)

# -- discovery (m003_discovery) ----------------------------------------------------------------------

discovery_runs = Table(
    "discovery_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("config", JSON, nullable=False),  # the resolved DiscoverConfig
    Column("report", JSON),  # counts, timings, the assigner and map paths
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("discovery_runs.id"), nullable=False),
    Column("task_key", String(64), nullable=False),  # unique within a run
    Column("label", Text, nullable=False),  # readable: dominant tool or kind, then c-TF-IDF terms
    Column("signature", String(200), nullable=False),  # call site | template | tool set | response kind
    Column("output_kind", String(16), nullable=False),  # tool_call | json | text
    Column("volume", Integer, nullable=False),  # calls
    Column("tokens", Integer, nullable=False),  # prompt + completion tokens (logged, else estimated)
    Column("cost", Float, nullable=False),  # USD (logged, else estimated from tokens)
    Column("regularity", Float, nullable=False),  # share of the task's most common output shape
    Column("suitability", Float, nullable=False),  # volume x cost x regularity, 1.0 for the run's best
    Column("dominant_tool", String(200)),
    Column("details", JSON),  # top terms, tool shares, examples, centroid
)
Index("ix_tasks_run_key", tasks.c.run_id, tasks.c.task_key, unique=True)

exchange_tasks = Table(
    "exchange_tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("discovery_runs.id"), nullable=False),
    Column("exchange_id", Integer, ForeignKey("exchanges.id"), nullable=False),
    Column("task_key", String(64)),  # null: an outlier, in no task
    Column("confidence", Float),  # cosine to the task's centroid in the embedding space, in [0, 1]
)
Index("ix_exchange_tasks_run", exchange_tasks.c.run_id, exchange_tasks.c.exchange_id)


# -- operations (m005_operations) --------------------------------------------------------------------

route_events = Table(
    "route_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(32), nullable=False),
    Column("specialist_id", Integer, ForeignKey("specialists.id"), nullable=False),
    Column("task", String(200), nullable=False),  # the specialist's task, as `downsize route` names it
    Column("from_mode", String(16), nullable=False),  # the specialist's status before
    Column("to_mode", String(16), nullable=False),  # off | shadow | canary | live (or retired)
    Column("traffic", Float),  # canary share after the change
    Column("actor", String(32), nullable=False),  # cli | admin | rollback | flywheel | promote
    Column("reason", Text, nullable=False),
    Column("evidence", JSON),  # the figures behind the change (a rollback's counts and bounds)
)
Index("ix_route_events_specialist", route_events.c.specialist_id)

flywheel_runs = Table(
    "flywheel_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(32), nullable=False),
    Column("finished_at", String(32)),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("trigger", String(64)),  # once | schedule | exchanges:<n> | resume:<run>
    Column("config", JSON, nullable=False),
    Column("state", JSON),  # the steps done so far and their results: what a resumed run skips
    Column("report", JSON),
)
