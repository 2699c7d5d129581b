"""Typed run configuration: TOML file + ``--set section.key=value`` overrides -> dataclasses.

A config has three sections. ``[data]`` says where the prepared corpus is, ``[model]`` picks the
model (``kind``) and its shape (the fields of that model's config dataclass), ``[train]`` sets the
optimisation. Unknown keys and wrong types fail with a one-line error listing the valid keys.
The same model dataclass builds the model and is stored in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt.agreement import COSTS
from nmt.device import AMPS
from nmt.errors import NmtError
from nmt.models import model_config_class
from nmt.schedules import SCHEDULES


@dataclass
class DataConfig:
    dir: str = "prepared"  # a folder written by `nmt prepare`


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Defaults suit a ~7M-parameter model on a small corpus."""

    seed: int = 1  # seeds python, torch and the data order
    batch_tokens: int = 4096  # tokens per batch (max of padded source and target)
    accumulate: int = 1  # batches per optimizer update (gradient accumulation)
    lr: float = 1e-3  # peak learning rate
    schedule: str = "inverse_sqrt"  # inverse_sqrt | noam | plateau | constant
    warmup: int = 1000  # warm-up updates for inverse_sqrt / noam
    plateau_factor: float = 0.5  # plateau: multiply lr by this when valid BLEU stalls
    plateau_patience: int = 2  # plateau: validations without improvement before decaying
    min_lr: float = 1e-5  # schedules never go below this
    adam_betas: tuple[float, float] = (0.9, 0.98)  # Adam's (beta1, beta2), e.g. [0.9, 0.98]
    weight_decay: float = 0.0  # Adam's L2 weight decay (0 = off)
    label_smoothing: float = 0.1  # epsilon of label-smoothed cross-entropy (0 = plain cross-entropy)
    coverage_loss: float = 0.0  # lambda of See et al.'s coverage loss (0 = off; any model returning attention)
    guided_alignment: float = 0.0  # lambda of the supervised-attention loss (0 = off; needs nmt prepare --train-align)
    align_layer: int = -1  # which decoder layer's attention it supervises (-1 = last; an LSTM has one)
    align_head: int = 0  # and which head of it (read it with nmt translate --align-layer L --align-heads H)
    agreement: float = 0.0  # lambda of bidirectional agreement: train a target->source model too (0 = off; nmt.agreement)
    agreement_cost: str = "trace"  # trace (Cohn et al. 2016) | squared (Cheng et al. 2016); on align_layer/align_head
    source_dropout: float = 0.0  # multi-source: probability that a source of an example is left out (EOS only) in training
    clip_norm: float = 1.0  # max gradient norm (0 = no clipping)
    max_steps: int = 0  # stop after this many updates (0 = no limit)
    max_epochs: int = 0  # stop after this many epochs (0 = no limit)
    max_minutes: float = 0.0  # stop after this much wall-clock training time (0 = no limit)
    valid_every: int = 1000  # updates between validations (valid loss, ppl, BLEU)
    valid_beam: int = 5  # beam size for validation BLEU (1 = greedy, faster)
    valid_max_sentences: int = 0  # 0 = the whole valid set
    save_every: int = 0  # updates between last.pt writes (0 = at each validation only)
    patience: int = 0  # early stopping: validations without BLEU gain (0 = never stop early)
    keep_last: bool = True  # write last.pt at each validation too (save_every and a stop request always do)
    keep_checkpoints: int = 0  # also keep the weights of the last N validations as step-<update>.pt (nmt average)
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and saved (e.g. 0.999; 0 = off)
    device: str = "auto"  # cpu | cuda | auto
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only; bf16 on CPU and CUDA)
    threads: int = 0  # CPU threads for torch (0 = all cores)
    nan_policy: str = "stop"  # what a NaN/inf loss does: stop | skip
    log_every: int = 50  # updates between JSONL metric lines

    def __post_init__(self):
        positive = ("batch_tokens", "accumulate", "valid_every", "valid_beam", "log_every")
        not_negative = ("max_steps", "max_epochs", "max_minutes", "valid_max_sentences", "save_every", "patience",
                        "threads", "clip_norm", "weight_decay", "coverage_loss", "plateau_patience", "min_lr",
                        "guided_alignment", "align_head", "agreement", "keep_checkpoints")
        checks = [
            *((getattr(self, k) >= 1, f"train.{k} must be >= 1, got {getattr(self, k)!r}") for k in positive),
            *((getattr(self, k) >= 0, f"train.{k} must be >= 0, got {getattr(self, k)!r}") for k in not_negative),
            (self.lr > 0, f"train.lr must be > 0, got {self.lr!r}"),
            (self.schedule in SCHEDULES, f"unknown train.schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"),
            (self.warmup >= 1 or self.schedule not in ("inverse_sqrt", "noam"),
             f"train.warmup must be >= 1 for the {self.schedule} schedule, got {self.warmup!r}"),
            (self.warmup >= 0, f"train.warmup must be >= 0, got {self.warmup!r}"),
            (0 < self.plateau_factor <= 1, f"train.plateau_factor must be in (0, 1], got {self.plateau_factor!r}"),
            (0 <= self.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing!r}"),
            (0 <= self.ema < 1, f"train.ema must be in [0, 1) (0 = off), got {self.ema!r}"),
            (0 <= self.source_dropout < 1, f"train.source_dropout must be in [0, 1), got {self.source_dropout!r}"),
            (self.agreement_cost in COSTS,
             f"unknown train.agreement_cost {self.agreement_cost!r}; valid: {', '.join(COSTS)}"),
            (self.amp in AMPS, f"unknown train.amp {self.amp!r}; valid: {', '.join(AMPS)}"),
            (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"),
             f"unknown train.device {self.device!r}; valid: cpu, cuda, cuda:N, auto"),
            (self.nan_policy in ("stop", "skip"), f"unknown train.nan_policy {self.nan_policy!r}; valid: stop, skip"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model_kind: str = "transformer"
    model: Any = None  # the model's own config dataclass, chosen by model_kind
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {
            "data": dataclasses.asdict(self.data),
            "model": {"kind": self.model_kind, **dataclasses.asdict(self.model)},
            "train": dataclasses.asdict(self.train),
        }


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against a dataclass field type."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise NmtError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise NmtError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise NmtError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NmtError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise NmtError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, values: dict, section: str) -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys and wrong types fail clearly."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise NmtError(f"unknown key {section}.{unknown[0]}; valid keys in [{section}]: {', '.join(names)}")
    try:
        return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})
    except ValueError as e:  # a config's own consistency check (__post_init__)
        raise NmtError(str(e)) from None


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=5e-4", "model.heads=8"]`` -> ``{"train": {"lr": "5e-4"}, "model": {"heads": "8"}}``.

    Values stay strings (TOML-parsed when they look like TOML: lists, booleans, numbers) and are
    type-checked against the dataclass field later.
    """
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise NmtError(f"--set expects section.key=value (e.g. train.lr=5e-4), got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or a run's ``config.json``; or start from defaults), apply overrides,
    validate, return the config."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
            raw = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise NmtError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise NmtError(f"{path}: not valid TOML ({e}); fix the syntax") from None
        except json.JSONDecodeError as e:
            raise NmtError(f"{path}: not valid JSON ({e}); fix the syntax") from None
        if not isinstance(raw, dict):
            raise NmtError(f"{path}: a config is a table of sections (data, model, train), not {type(raw).__name__}")
    for section, values in parse_overrides(overrides or []).items():
        raw.setdefault(section, {}).update(values)
    sections = ("data", "model", "train")
    for key, value in raw.items():
        if key not in sections or not isinstance(value, dict):
            raise NmtError(f"unknown config section {key!r}; valid sections: {', '.join(sections)}")
    model_raw = dict(raw.get("model", {}))
    kind = model_raw.pop("kind", "transformer")
    try:
        model_cls = model_config_class(kind)
    except ValueError as e:
        raise NmtError(f"model.kind: {e}") from None
    return RunConfig(
        data=from_dict(DataConfig, raw.get("data", {}), "data"),
        model_kind=kind,
        model=from_dict(model_cls, model_raw, "model"),
        train=from_dict(TrainConfig, raw.get("train", {}), "train"),
    )


def model_differences(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """The ``model`` keys whose values differ between two model configs (lists and tuples compare
    equal), split into those that leave the weights' meaning alone (names ending in ``dropout``)
    and all others."""
    keys = [k for k in sorted(set(saved) | set(now)) if _plain(saved.get(k)) != _plain(now.get(k))]
    return [k for k in keys if k.endswith("dropout")], [k for k in keys if not k.endswith("dropout")]


def _plain(value: Any) -> Any:
    """Tuples as lists (a config read from JSON has lists where the dataclass has tuples)."""
    return list(value) if isinstance(value, tuple) else value
