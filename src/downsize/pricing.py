"""Upstream list prices and the specialists' hourly rate: the one place downsize reads a price.

The shipped table is `prices.toml` beside this module (dated, with each price's source page); a user file,
`$DOWNSIZE_HOME/prices.toml` or the path a command is given, replaces its entries model id by model id and
adds new ones. A model name is priced by its exact id, else by the longest listed id it extends (a dated
snapshot `gpt-4o-2024-08-06` is `gpt-4o`). A name nothing matches has no price: callers count such calls
apart instead of guessing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from downsize.config import home
from downsize.errors import ConfigError

SHIPPED = Path(__file__).with_name("prices.toml")
USER_FILE = "prices.toml"  # under $DOWNSIZE_HOME
# what may follow a listed id in a longer model name for the id's price to apply (a snapshot, a tag)
_SEPARATORS = ("-", ":", "@", "_")


@dataclass(frozen=True)
class Price:
    """One model's list price, USD per million tokens."""

    model: str  # the id it is listed under
    input: float
    output: float
    cached_input: float | None = None  # input read from the provider's prompt cache, where it is listed
    source: str = ""
    read_on: str = ""
    note: str = ""
    file: str = ""  # the file it came from

    def cost(self, prompt_tokens: float, completion_tokens: float, cached_tokens: float = 0.0) -> float:
        """USD for one call: `cached_tokens` are the part of `prompt_tokens` read from the cache."""
        cached = min(max(cached_tokens, 0.0), prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return (
            (prompt_tokens - cached) * self.input + cached * cached_rate + completion_tokens * self.output
        ) / 1e6


@dataclass
class PriceTable:
    """Prices by lower-cased model id, the specialists' hourly rate, and the files they came from."""

    prices: dict[str, Price]
    specialist_hourly_usd: float
    specialist_hourly_source: str = ""
    read_on: str = ""
    files: list[str] = field(default_factory=list)

    def lookup(self, model: str | None) -> Price | None:
        """The price of a model name: exact id, else the longest listed id it extends, each tried on the whole
        name and then without a provider path (`openai/gpt-4o`); None when nothing matches."""
        if not model:
            return None
        name = model.strip().lower()
        names = [name]
        if "/" in name:
            names.append(name.rsplit("/", 1)[1])
        for candidate in names:
            if candidate in self.prices:
                return self.prices[candidate]
        for candidate in names:
            best = max(
                (
                    listed
                    for listed in self.prices
                    if len(candidate) > len(listed)
                    and candidate.startswith(listed)
                    and candidate[len(listed)] in _SEPARATORS
                ),
                key=len,
                default=None,
            )
            if best is not None:
                return self.prices[best]
        return None

    def cost(
        self, model: str | None, prompt_tokens: float, completion_tokens: float, cached_tokens: float = 0.0
    ) -> float | None:
        """USD for one call of `model`, or None when the model has no price."""
        price = self.lookup(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens, cached_tokens)


def _number(value: Any, where: str, key: str, required: bool = True) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(
            f"{where}: '{key}' must be a non-negative number (USD per million tokens), not {value!r}"
        )
    return float(value)


def _entries(data: dict[str, Any], path: Path) -> dict[str, Price]:
    entries = data.get("price", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'price' must be a list of [[price]] tables")
    out: dict[str, Price] = {}
    known = {"models", "input", "output", "cached_input", "source", "read_on", "note"}
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: price entry {index} is not a table")
        models = entry.get("models")
        label = f"price entry {index}" + (f" ({models[0]})" if isinstance(models, list) and models else "")
        where = f"{path}: {label}"
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"{where}: 'models' must be a non-empty list of model ids")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (allowed: {sorted(known)})")
        for key in ("input", "output"):
            if key not in entry:
                raise ConfigError(f"{where}: '{key}' is missing (USD per million tokens)")
        input_price = _number(entry["input"], where, "input")
        output_price = _number(entry["output"], where, "output")
        cached = _number(entry.get("cached_input"), where, "cached_input", required=False)
        assert input_price is not None and output_price is not None
        for model in models:
            out[model.strip().lower()] = Price(
                model=model,
                input=input_price,
                output=output_price,
                cached_input=cached,
                source=str(entry.get("source", "")),
                read_on=str(entry.get("read_on", data.get("read_on", ""))),
                note=str(entry.get("note", "")),
                file=str(path),
            )
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"price file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _apply(table: PriceTable, path: Path) -> None:
    data = _read(path)
    table.prices.update(_entries(data, path))
    if "specialist_hourly_usd" in data:
        rate = _number(data["specialist_hourly_usd"], str(path), "specialist_hourly_usd")
        assert rate is not None
        table.specialist_hourly_usd = rate
        table.specialist_hourly_source = str(data.get("specialist_hourly_source", path))
    if "read_on" in data:
        table.read_on = str(data["read_on"])
    table.files.append(str(path))


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The shipped table, then the user's file over it: `path` when given (it must exist), else
    `$DOWNSIZE_HOME/prices.toml` when there is one. ConfigError names the file and the entry at fault."""
    table = PriceTable(prices={}, specialist_hourly_usd=0.0)
    _apply(table, SHIPPED)
    user = Path(path).expanduser() if path is not None else home() / USER_FILE
    if path is not None or user.is_file():
        _apply(table, user)
    return table
