"""What a training run writes and reads back: best.pt, last.pt (with the training state that
makes ``--resume`` exact), the step-<update>.pt snapshots of ``train.keep_checkpoints``, the
reverse model's checkpoints (``train.agreement``), and the checks a resumed run must pass.

:class:`RunFiles` is a part of :class:`nmt.train.Trainer`, kept apart to keep each file to one concept.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from nmt.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from nmt.config import model_differences
from nmt.errors import NmtError
from nmt.runtime import rng_state, set_rng_state


RUN_FILES = ("best.pt", "last.pt", "best.reverse.pt", "last.reverse.pt", "metrics.jsonl")


def earlier_run(out: Path) -> list[str]:
    """The names of the files of a run already in folder ``out`` (checkpoints, step snapshots, metrics)."""
    if not out.is_dir():
        return []
    return sorted(f.name for f in out.iterdir() if f.name in RUN_FILES or re.fullmatch(r"step-\d+\.pt", f.name))


def refuse_earlier_run(out: Path, resume: bool, overwrite: bool) -> None:
    """``nmt train``'s check of its folder, before anything is built: a run with checkpoints there is
    continued (``resume``) or replaced (``overwrite``), never silently mixed with a new one. A run that
    stopped before its first checkpoint (its metrics.jsonl alone) is simply started over."""
    if resume and overwrite:
        raise NmtError("--resume continues the run in OUT, --overwrite replaces it: give one")
    checkpoints = [name for name in earlier_run(out) if name.endswith(".pt")]
    if resume or overwrite or not checkpoints:
        return
    shown = ", ".join(checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
    how = ("continue it with --resume, or start over with --overwrite" if (out / "last.pt").exists()
           else "it has no last.pt to resume from: start over with --overwrite")
    raise NmtError(f"-o {out}: holds a run already ({shown}); {how}")


class RunFiles:
    """Checkpoint methods of :class:`nmt.train.Trainer` (which holds the state they read)."""

    def _start_fresh(self) -> None:
        """A new run (not ``--resume``), as it starts: the files of an earlier run in the folder go
        first, so that best.pt, metrics.jsonl and the step snapshots are this run's alone (``nmt
        train`` refuses a folder with checkpoints unless given ``--overwrite``)."""
        if self.dist.is_main:
            for name in earlier_run(self.out):
                (self.out / name).unlink(missing_ok=True)

    def _spent(self) -> str | None:
        """The limit a resumed run has already reached (then it has nothing left to do), else None."""
        tc = self.tc
        if tc.max_steps and self.step >= tc.max_steps:
            return "max_steps"
        if tc.max_minutes and self.elapsed >= tc.max_minutes * 60:
            return "max_minutes"
        if tc.max_epochs and self.epoch >= tc.max_epochs:
            return "max_epochs"
        if tc.patience and self.bad_validations >= tc.patience:
            return "early_stopping"
        return None

    def _training_state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "step": self.step, "epoch": self.epoch,
                "position": self.position, "elapsed": self.elapsed, "best_bleu": self.best_bleu,
                "bad_validations": self.bad_validations, "lr_scale": self.lr_scale,
                "plateau_bad": self.plateau_bad, "rng": rng_state(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "reverse": self.reverse.state_dict() if self.reverse is not None else {},
                "raw": self.model.state_dict() if self.average is not None else {}}  # train.ema: what training goes on from

    def _meta(self, bleu: float | None) -> dict:
        return {"step": self.step, "epoch": self.epoch, "update_epoch": self.update_epoch(), "valid_bleu": bleu,
                "best_valid_bleu": self.best_bleu, "ema": self.tc.ema, "train_pairs": len(self.train_data),
                "context": self.train_data.context, "config": self.cfg.to_dict()}

    def save(self, name: str, bleu: float | None = None) -> None:
        if not self.dist.is_main:
            return
        meta = self._meta(bleu)
        atomic_save(make_checkpoint(self.served, self.cfg.model_kind, self.spm_bytes, meta, self._training_state()),
                    self.out / name)
        if self.reverse is not None:  # the target->source model, a checkpoint of its own: best.reverse.pt
            meta = {**meta, "direction": "reverse", "valid_bleu": None, "best_valid_bleu": None, "ema": 0.0}  # raw weights
            atomic_save(make_checkpoint(self.reverse, self.cfg.model_kind, self.spm_bytes, meta),
                        self.out / name.replace(".pt", ".reverse.pt"))

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            stuck = any(name.endswith(".pt") for name in earlier_run(self.out))  # e.g. best.pt of train.keep_last=false
            raise NmtError(f"{path}: nothing to resume; train without --resume" + (" but with --overwrite" * stuck))
        ckpt = load_checkpoint(path, mmap=False)  # all of it is needed, and kept for the whole run
        self._check_fits(path, ckpt)
        t = ckpt.get("training")
        if t is None:
            raise NmtError(f"{path}: has no training state to resume from")
        raw = t.get("raw")  # train.ema: "weights" is the average, "raw" what training goes on from
        self.model.load_state_dict(raw or ckpt["weights"])
        if self.average is not None:
            self.average.load_state_dict(ckpt["weights"])
            if not raw:
                self.log(f"note: {path} was trained without train.ema; the average starts from its weights")
        elif raw and self.tc.ema == 0:
            self.log(f"note: {path} was trained with train.ema; going on without it, from its raw weights")
        if self.reverse is not None:
            if not t.get("reverse"):
                raise NmtError(f"{path}: was trained without train.agreement; its optimizer has no reverse model")
            self.reverse.load_state_dict(t["reverse"])
        elif t.get("reverse"):
            raise NmtError(f"{path}: was trained with train.agreement > 0; resume with it")
        self.opt.load_state_dict(t["optimizer"])
        for key in ("step", "epoch", "position", "elapsed", "best_bleu", "bad_validations", "lr_scale", "plateau_bad"):
            setattr(self, key, t[key])
        if self.scaler and t.get("scaler"):
            self.scaler.load_state_dict(t["scaler"])
        set_rng_state(t["rng"])
        self.log(f"resumed from {path} at update {self.step} (epoch {self.epoch + 1}, batch {self.position})")

    def _check_fits(self, path: Path, ckpt: dict) -> None:
        """The config's model must be the checkpoint's (kind, every setting but dropout: even where
        the weights would load, as with other heads, they would mean something else) and so must
        its SentencePiece model; another dropout applies from here on, with a note."""
        if ckpt["kind"] != self.cfg.model_kind:
            raise NmtError(f"{path}: is a {ckpt['kind']} model but the config asks for {self.cfg.model_kind}")
        saved, now = ckpt["model_config"], asdict(self.cfg.model)
        dropouts, others = model_differences(saved, now)
        if others:
            raise NmtError(f"{path}: the config's model differs from the checkpoint's ({_differences(others, saved, now)})"
                           f"; a resumed run keeps its model: drop the -c or --set that changes it (the run's own "
                           f"settings: {self.out / 'config.json'})")
        if bytes(ckpt["spm_model"].numpy()) != self.spm_bytes:
            raise NmtError(f"{path}: data.dir {self.cfg.data.dir} has another SentencePiece model than the run's")
        if dropouts:
            self.log(f"note: continuing with other dropout than {path}'s: {_differences(dropouts, saved, now)}")

    def _snapshot(self, bleu: float | None) -> None:
        """train.keep_checkpoints: the served weights as step-<update>.pt (no training state: for
        nmt translate and nmt average), keeping the newest N."""
        atomic_save(make_checkpoint(self.served, self.cfg.model_kind, self.spm_bytes, self._meta(bleu)),
                    self.out / f"step-{self.step}.pt")
        steps = sorted(int(m.group(1)) for f in self.out.glob("step-*.pt") if (m := re.fullmatch(r"step-(\d+)\.pt", f.name)))
        for old in steps[:-self.tc.keep_checkpoints]:
            (self.out / f"step-{old}.pt").unlink(missing_ok=True)


def _differences(keys: list[str], saved: dict, now: dict) -> str:
    return "; ".join(f"model.{k} {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in keys)
