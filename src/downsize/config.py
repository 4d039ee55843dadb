"""Where downsize keeps its files, and one config dataclass per stage.

Values come from defaults, then an optional YAML file, then CLI flags; every artifact saves
the resolved config it was made with (`asdict(config)`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from downsize.errors import ConfigError


def home() -> Path:
    """$DOWNSIZE_HOME (default ~/.downsize), created on first use."""
    path = Path(os.environ.get("DOWNSIZE_HOME") or Path.home() / ".downsize").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted student weights: $DOWNSIZE_MODELS, else $DOWNSIZE_HOME/models (shared by every specialist)."""
    path = Path(os.environ.get("DOWNSIZE_MODELS") or home() / "models").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url() -> str:
    return f"sqlite:///{home() / 'downsize.db'}"


TRAIN_METHODS = ("lora", "dora", "full", "qlora")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
TRAIN_KINDS = ("auto", "tool_call", "json", "label", "react", "text")  # contracts.py
# Adapters learn fast from zero-initialised weights; updating every pretrained weight needs a far gentler step.
DEFAULT_LEARNING_RATES = {"lora": 1e-3, "dora": 1e-3, "qlora": 1e-3, "full": 5e-5}


@dataclass
class TrainConfig:
    """Supervised distillation of the teacher's tool calls into a small student: LoRA by default."""

    student: str = "smollm2-135m"  # a catalog name, a Hugging Face model id or a local folder
    specialist: str | None = None  # name of the specialist; default: its task(s), else its agent's call site
    source: str | None = None  # train on this source's calls only (see `downsize splits`)
    agent: str | None = None  # train on this agent's calls only; the router then serves only this agent
    tools: list[str] = field(default_factory=list)  # the call site: requests offering exactly these tools
    site: str | None = None  # the call site by key (`downsize sites`): tools:a,b or prompt:<template hash>
    kind: str = "auto"  # the output contract: auto (detected) | tool_call | json | label | react | text
    max_prompt_tokens: int = 192  # pruned prompt budget: older turns are dropped first
    max_message_tokens: int = 96  # each kept message is cut to this many tokens (head and tail kept)
    max_target_tokens: int = 64  # longer teacher calls are skipped, not truncated
    validation_fraction: float = 0.25  # of dev workflows (by hash), held out for threshold calibration
    # lora | dora (weight-decomposed LoRA) | full (every weight) | qlora (4-bit base + LoRA: CUDA + bitsandbytes)
    method: str = "lora"
    # auto: bf16 autocast on a GPU that supports it, fp32 elsewhere (bf16 is ~23x slower on AVX2-only CPUs)
    precision: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float | None = None  # default by method: 1e-3 for adapters, 5e-5 for full fine-tuning
    # examples per step; None: 2 on CPU (faster per token there than 8, and more updates per token:
    # docs/log.md 2026-12-02), 16 on a GPU
    batch_size: int | None = None
    epochs: float = 1.0  # an upper bound; the token and minute budgets may stop earlier
    max_tokens: int | None = None  # stop after this many trained tokens (padding excluded)
    max_minutes: float | None = None  # stop after this many minutes of training
    seed: int = 0
    threads: int | None = None  # torch threads; default: all cores
    curated: bool = (
        False  # train on the newest `downsize curate` run (masked, deduplicated) instead of raw logs
    )
    gate: bool = True  # fit the task gate (text or which tool) on every training call, text replies included
    # learn the parameters the teacher copies from the conversation (ids): the grammar then allows only the
    # conversation's tokens for them, and the prompt lists those options (`copying.py`)
    copy_arguments: bool = True
    # with copy_arguments: also learn the string parameters (at any depth) whose value the teacher takes as a
    # word-aligned span of the conversation (names, places, dates as written); the grammar then allows only
    # such spans for them (`copying.learn_spans`)
    copy_spans: bool = True
    # discovered tasks (keys from `downsize tasks`) to train on; empty: every tool call of the source.
    # The router then serves only requests its task assigner maps to one of them.
    tasks: list[str] = field(default_factory=list)
    discovery_run: int | None = None  # the discovery run those keys belong to (default: the newest)
    # cross-fitting (`evaluate/crossfit.py`): K >= 2 splits the dev workflows into K folds by hash; the
    # specialist holds out fold 0 (validation_fraction becomes 1/K) and K - 1 fold models, each trained the
    # same way on every other fold, score the rest, so calibration sees every dev call from a model that
    # never trained on its workflow. 0: calibrate on the validation part only.
    cross_fit: int = 0
    fold: int = 0  # the dev fold this training holds out (set per fold model by cross-fitting)

    def __post_init__(self) -> None:
        if self.cross_fit == 1 or not 0 <= self.cross_fit <= 10:
            raise ConfigError(f"cross_fit is a number of folds from 2 to 10 (0: off), not {self.cross_fit}")
        if self.cross_fit:
            self.validation_fraction = 1.0 / self.cross_fit
        folds = round(1 / self.validation_fraction) if self.validation_fraction > 0 else 1
        if not 0 <= self.fold < max(1, folds):
            raise ConfigError(f"fold {self.fold} is outside the {folds} dev folds")
        if self.method not in TRAIN_METHODS:
            raise ConfigError(
                f"unknown training method {self.method!r}: use one of {', '.join(TRAIN_METHODS)}"
            )
        if self.precision not in TRAIN_PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}: use one of {', '.join(TRAIN_PRECISIONS)}"
            )
        if self.kind not in TRAIN_KINDS:
            raise ConfigError(f"unknown output kind {self.kind!r}: use one of {', '.join(TRAIN_KINDS)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, not {self.learning_rate}")
        if (self.batch_size is not None and self.batch_size < 1) or self.lora_r < 1:
            raise ConfigError("batch_size and lora_r must be >= 1")

    @property
    def resolved_learning_rate(self) -> float:
        """The learning rate set, else the method's default (kept unresolved so a changed method changes it)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]


# keys a stored specialist's config holds beside its TrainConfig (what training found, not what was asked)
SPECIALIST_KEYS = ("task_tools", "contract", "sites")


def train_config_of(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a stored specialist was trained with (its `config` without the found keys)."""
    return resolve(TrainConfig, {k: v for k, v in config.items() if k not in SPECIALIST_KEYS})


# how served calls count as evidence (`evaluate/metrics.py`): by their workflows, or as independent
COUNTS = ("workflows", "calls")


@dataclass
class EvalConfig:
    """Held-out evaluation of a specialist against the teacher's logged calls."""

    target_agreement: float = 0.95  # the threshold is the lowest that reaches this on validation
    batch_size: int = 16
    max_new_tokens: int = 64
    limit: int | None = None  # evaluate at most this many exchanges per split (for quick looks)
    # tool tiers by name pattern (`decide/risk.py`): {read_only: [get_*, ...], destructive: [cancel_*, ...]};
    # annotations the agent sends with its tools come first; every other tool is strict
    risk: dict[str, list[str]] = field(default_factory=dict)
    # how served calls count as evidence for the threshold: "workflows" (calls of one workflow agree or fail
    # together: counted by the design effect) or "calls" (as independent: the laxer rule)
    count: str = "workflows"

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ConfigError(f"eval count must be one of {', '.join(COUNTS)}, not {self.count!r}")


PROBE_MODES = ("shadow", "live")


@dataclass
class ProbeConfig:
    """The consistency probe (`probe:` in the gateway YAML): re-ask the upstream a share of calls and store its
    second answer beside the first, to measure the teacher's agreement with itself (`evaluate/probe.py`).

    Off by default: each probe is one more paid upstream call (`downsize probes` shows what they cost). The
    second request runs in the background after the agent has its answer, so it adds no latency. `shadow`
    probes calls the upstream answered; `live` also probes calls a specialist served, so the teacher's answer
    to them is known too (the live specialist's agreement, measured)."""

    fraction: float = 0.0  # share of eligible calls re-asked, 0 to 1
    mode: str = "shadow"  # shadow | live
    max_in_flight: int = 4  # probes running at once; more are skipped (counted), never queued

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"probe.fraction is a share from 0 to 1, not {self.fraction}")
        if self.mode not in PROBE_MODES:
            raise ConfigError(f"probe.mode must be one of {', '.join(PROBE_MODES)}, not {self.mode!r}")
        if self.max_in_flight < 1:
            raise ConfigError("probe.max_in_flight must be >= 1")


@dataclass
class RouteConfig:
    """How the gateway decides between its specialists and the upstream LLM (`route:` in the gateway YAML)."""

    enabled: bool = True  # false: log only, every request goes upstream (as --no-route)
    threshold: float | None = None  # override every specialist's calibrated threshold (as --threshold)
    specialists: list[str] = field(
        default_factory=list
    )  # names or ids to route (as --specialist); default: live
    engine: str = "auto"  # auto | transformers | llamacpp (as --engine)
    # routing modes applied when the gateway starts, as `downsize route TASK MODE` would (gated the same way):
    # {TASK: MODE} or {TASK: {mode: canary, traffic: 0.1}}; TASK is a specialist id or name, or its task
    modes: dict[str, Any] = field(default_factory=dict)
    reload_s: float = 5.0  # how often the gateway looks for routing changes in the store (0: never)

    def __post_init__(self) -> None:
        if self.reload_s < 0:
            raise ConfigError(f"route.reload_s is seconds >= 0, not {self.reload_s}")
        for task, value in self.modes.items():
            mode = value.get("mode") if isinstance(value, dict) else value
            if mode not in ("off", "shadow", "canary", "live"):
                raise ConfigError(
                    f"route.modes.{task}: the mode must be off, shadow, canary or live, not {mode!r}"
                )


@dataclass
class RollbackConfig:
    """Automatic rollback (`rollback:` in the gateway YAML): a canary or live task goes back to shadow when, on
    the traffic since it went live, the evidence says with `confidence` that it is worse than a limit. One bad
    call never does it: each rule needs `min_calls` observations and a one-sided bound past its limit.

    - disagreement: served calls the gateway also sent to the LLM (`check_fraction` of them, in the background)
      and that the LLM answered differently (strict rule of the task's kind); rolls back when the lower bound of
      the disagreement rate is above `max_disagreement`;
    - failures: answers that fail validation, error or time out (a changed tool schema), among the calls the
      specialist answered; rolls back when the lower bound of their share is above `max_failure_rate`;
    - served share: the share of the task's calls served, against the one its evaluation measured at the same
      threshold on validation (abstaining is the design: most calls of a talkative agent fall back); rolls back
      when the upper bound is below that share times (1 - `max_served_drop`);
    - outcomes: workflows (sessions) with a served call whose reported success (`POST /v1/downsize/outcomes`)
      is below the LLM-only workflows' of the same agent by more than `max_success_drop` (upper bound)."""

    enabled: bool = True
    check_fraction: float = 0.05  # share of served calls also asked of the LLM (each is a paid upstream call)
    max_disagreement: float = 0.25
    max_failure_rate: float = 0.20
    max_served_drop: float = 0.50  # relative: 0.5 rolls back when the served share halves
    max_success_drop: float = 0.15
    min_calls: int = 20  # served checks (disagreement) or the task's decided calls (other rules) a rule needs
    min_workflows: int = 10  # workflows with an outcome, on each side, the outcome rule needs
    confidence: float = 0.95
    interval_s: float = 30.0  # how often the gateway checks its canary and live tasks

    def __post_init__(self) -> None:
        for name in (
            "check_fraction",
            "max_disagreement",
            "max_failure_rate",
            "max_served_drop",
            "max_success_drop",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"rollback.{name} is a share from 0 to 1, not {value}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"rollback.confidence is from 0.5 to 1 (exclusive), not {self.confidence}")
        if self.min_calls < 1 or self.min_workflows < 1 or self.interval_s <= 0:
            raise ConfigError(
                "rollback.min_calls and rollback.min_workflows must be >= 1, rollback.interval_s > 0"
            )


@dataclass
class UpstreamTarget:
    """One OpenAI-compatible upstream in the gateway's fallback order."""

    url: str
    # Environment variable holding this upstream's own API key. When set, the agent's key is never sent to
    # this upstream (it may belong to another provider); when unset, the agent's key is forwarded as usual.
    api_key_env: str | None = None


@dataclass
class GatewayKey:
    """A key callers present to the gateway as `Authorization: Bearer <key>`, and the role it grants."""

    role: str  # agent (call models, report outcomes) | reader (read the logs) | admin (everything)
    env: str | None = None  # environment variable holding the key
    sha256: str | None = None  # or the hex SHA-256 of the key, so a config file holds no secret
    name: str | None = None  # a label for the gateway's own logs (never the key)


GATEWAY_ROLES = ("agent", "reader", "admin")
CAPTURE_MODES = ("async", "sync")
QUEUE_POLICIES = ("block", "shed")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass
class GatewayConfig:
    """The OpenAI-compatible gateway: upstreams, capture, security and logging (see docs/gateway.md)."""

    upstream: str = "https://api.openai.com/v1"  # the primary upstream
    fallback_upstreams: list[UpstreamTarget] = field(default_factory=list)  # tried in order after it
    upstream_api_key_env: str | None = None  # key for upstreams when the agent sends none of its own
    host: str = "127.0.0.1"
    port: int = 8787
    upstream_timeout_s: float = 120.0  # per attempt: silence longer than this moves on to the next upstream
    upstream_connect_timeout_s: float = 10.0
    upstream_retries: int = 2  # extra rounds over the upstream list, with exponential backoff and jitter
    retry_statuses: list[int] = field(default_factory=lambda: [429, 500, 502, 503, 504])
    backoff_base_s: float = 0.25  # first pause between rounds; doubles each round
    backoff_max_s: float = 4.0  # longest pause (a Retry-After up to this long is honoured)
    specialist_timeout_s: float | None = 10.0  # a slower specialist answer goes upstream instead
    max_body_bytes: int = 8 * 1024 * 1024
    capture_mode: str = "async"  # async: answer, then store | sync: answer once the exchange is committed
    queue_policy: str = "block"  # when the queue is full: block (wait for room) | shed (drop, counted)
    queue_max: int = 10_000  # exchanges waiting to be written
    capture_batch: int = 256  # exchanges per store transaction, at most
    capture_interval_s: float = 0.05  # the writer commits at least this often while exchanges wait
    capture_wait_s: float = 5.0  # longest a request waits on capture (queue room, or commit in sync mode)
    gateway_keys: list[GatewayKey] = field(default_factory=list)  # none: no gateway authentication
    anonymize: bool = False  # store origin ids (user, session, agent) as HMAC-SHA256 hashes
    anonymize_key_env: str = "DOWNSIZE_ANON_KEY"
    encrypt_bodies: bool = False  # require a store key: request and response bodies AES-GCM encrypted
    store_key_env: str = "DOWNSIZE_STORE_KEY"  # base64 of 32 random bytes
    redact: str | None = None  # "package.module:function" applied to each exchange before it is stored
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed; none: CORS off
    public_metrics: bool = True  # False: /metrics needs a reader or admin key
    log_format: str = "json"  # json | text
    log_level: str = "info"
    route: RouteConfig = field(default_factory=RouteConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)

    def __post_init__(self) -> None:
        if isinstance(self.probe, dict):
            self.probe = resolve(ProbeConfig, self.probe)
        if isinstance(self.rollback, dict):
            self.rollback = resolve(RollbackConfig, self.rollback)
        self.fallback_upstreams = [_upstream_target(t) for t in self.fallback_upstreams]
        self.gateway_keys = [_gateway_key(k) for k in self.gateway_keys]
        if isinstance(self.route, dict):
            self.route = resolve(RouteConfig, self.route)
        for name, value, allowed in (
            ("capture_mode", self.capture_mode, CAPTURE_MODES),
            ("queue_policy", self.queue_policy, QUEUE_POLICIES),
            ("log_format", self.log_format, LOG_FORMATS),
            ("log_level", self.log_level, LOG_LEVELS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        for target in [UpstreamTarget(self.upstream), *self.fallback_upstreams]:
            if not target.url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"upstream URLs must be http(s) URLs such as https://api.openai.com/v1, not {target.url!r}"
                )
        self.upstream = self.upstream.rstrip("/")
        if self.upstream_retries < 0 or self.queue_max < 1 or self.capture_batch < 1:
            raise ConfigError("upstream_retries must be >= 0, and queue_max and capture_batch >= 1")
        if self.upstream_timeout_s <= 0 or self.capture_interval_s <= 0 or self.capture_wait_s <= 0:
            raise ConfigError("upstream_timeout_s, capture_interval_s and capture_wait_s must be > 0")

    @property
    def upstreams(self) -> list[UpstreamTarget]:
        """Every upstream in fallback order: the primary (with upstream_api_key_env) first."""
        return [UpstreamTarget(self.upstream, self.upstream_api_key_env), *self.fallback_upstreams]


def _upstream_target(value: Any) -> UpstreamTarget:
    if isinstance(value, UpstreamTarget):
        target = value
    elif isinstance(value, str):
        target = UpstreamTarget(value)
    elif isinstance(value, dict):
        target = resolve(UpstreamTarget, value)
    else:
        raise ConfigError(f"an upstream is a URL or a mapping {{url, api_key_env}}, not {value!r}")
    target.url = target.url.rstrip("/")
    return target


def _gateway_key(value: Any) -> GatewayKey:
    key = value if isinstance(value, GatewayKey) else None
    if key is None:
        if not isinstance(value, dict):
            raise ConfigError(
                f"a gateway key is a mapping {{role, env or sha256}}, not {type(value).__name__}"
            )
        key = resolve(GatewayKey, value)
    if key.role not in GATEWAY_ROLES:
        raise ConfigError(f"a gateway key's role must be one of {', '.join(GATEWAY_ROLES)}, not {key.role!r}")
    if (key.env is None) == (key.sha256 is None):
        raise ConfigError(
            f"gateway key {key.name or key.role!r}: give exactly one of env (the variable holding the key) "
            "or sha256 (the key's hex digest)"
        )
    return key


def load_gateway_config(path: str | Path | None = None, **flags: Any) -> GatewayConfig:
    """GatewayConfig from defaults, then the YAML file at `path`, then flags (None means 'not given').

    A flag given as a list (e.g. several `--upstream`) replaces the file's list; `upstream` given as a list
    means the primary then its fallbacks.
    """
    values = load_yaml(path) if path is not None else {}
    upstream = flags.pop("upstream", None)
    if isinstance(upstream, list | tuple):
        if upstream:
            flags["upstream"] = upstream[0]
            flags["fallback_upstreams"] = list(upstream[1:]) or values.get("fallback_upstreams")
    elif upstream is not None:
        flags["upstream"] = upstream
    if isinstance(values.get("upstream"), list):
        listed = values.pop("upstream")
        if not listed:
            raise ConfigError("'upstream' in the config file is an empty list: give at least one URL")
        values["upstream"] = listed[0]
        values.setdefault("fallback_upstreams", listed[1:])
    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    flags = {k: v for k, v in flags.items() if v is not None and v != []}
    return resolve(GatewayConfig, values, **flags)


C = TypeVar("C")


def resolve(cls: type[C], file_values: dict[str, Any] | None = None, **overrides: Any) -> C:
    """Build a config from file values then overrides (None means 'not given'); unknown keys are errors."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for source in (file_values or {}), {k: v for k, v in overrides.items() if v is not None}:
        for key, value in source.items():
            if key not in known:
                raise ConfigError(
                    f"unknown {cls.__name__} setting {key!r}; known settings: {', '.join(sorted(known))}"
                )
            values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"bad {cls.__name__} settings: {exc}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a clear error if it is missing or not a mapping."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings, not {type(data).__name__}")
    return data
