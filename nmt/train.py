"""``nmt train``: the training loop.

One loop for every model: token-based batches, Adam, a learning-rate schedule, label smoothing,
gradient clipping and accumulation, periodic validation (loss, perplexity, BLEU by beam search),
``best.pt`` / ``last.pt``, early stopping, limits on updates, epochs and minutes, exact resume,
SIGINT/SIGTERM handling, and torch.distributed DDP when started by ``torchrun``.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch

from nmt.agreement import agreement_cost, reverse_batch
from nmt.config import RunConfig
from nmt.data import Batch, ParallelIds, epoch_batches
from nmt.device import amp_warning, autocast, check_amp, pick_device
from nmt.distributed import Dist
from nmt.ema import ema_decay, ema_update
from nmt.errors import NmtError
from nmt.guided import alignment_loss
from nmt.loss import coverage_loss, fuse_output_projection, output_loss
from nmt.models import build_model
from nmt.multisource import drop_sources
from nmt.onednn import use_onednn
from nmt.run_files import RunFiles
from nmt.runtime import Stop, peak_rss_mb
from nmt.schedules import SCHEDULES
from nmt.vocab import PAD_ID, Vocab


class Trainer(RunFiles):
    """Holds everything one run needs; :meth:`run` trains until a limit or a stop request."""

    def __init__(self, config: RunConfig, out_dir: Path, resume: bool = False, log=None):
        self.cfg, self.tc, self.out = config, config.train, Path(out_dir)
        self.dist = Dist.from_env(self.tc.device)
        self.log = log or (lambda m: print(m, file=sys.stderr))
        if not self.dist.is_main:  # under torchrun only rank 0 reports (errors still end every rank)
            self.log = lambda m: None
        self.device = self.dist.device if self.dist.enabled else pick_device(self.tc.device)
        autocast(self.device, self.tc.amp)  # an amp this device cannot run fails here, before anything is built
        if self.tc.threads:
            torch.set_num_threads(self.tc.threads)
        data_dir = Path(config.data.dir)
        if not (data_dir / "spm.model").exists():
            raise NmtError(f"{data_dir}: no spm.model here; run `nmt prepare` first or set data.dir")
        self.spm_bytes = (data_dir / "spm.model").read_bytes()
        self.vocab = Vocab(self.spm_bytes)
        self.train_data = ParallelIds.load(data_dir / "train.ids.pt", self.tc.guided_alignment > 0, len(self.vocab))
        if len(self.train_data) == 0:
            raise NmtError(f"{data_dir}/train.ids.pt: the training corpus is empty")
        self.valid_data = ParallelIds.load(data_dir / "valid.ids.pt", vocab_size=len(self.vocab)) \
            if (data_dir / "valid.ids.pt").exists() else None
        self.valid_text = self._valid_text(data_dir)
        config.model = self._fill_in(config.model, data_dir)
        random.seed(self.tc.seed)
        torch.manual_seed(self.tc.seed)
        self.model = build_model(config.model_kind, config.model).to(self.device)
        check_amp(self.model, self.device, self.tc.amp)
        # bidirectional agreement (nmt.agreement): a target->source model of the same shape, trained alongside
        self.reverse = build_model(config.model_kind, config.model).to(self.device) if self.tc.agreement > 0 else None
        if self.device.type == "cpu":  # fp32 products through oneDNN (nmt.onednn); the state dict is unchanged
            for m in filter(None, (self.model, self.reverse)):
                use_onednn(m, untie=False)
        if self.tc.guided_alignment > 0 or self.tc.agreement > 0:
            self._check_head(data_dir)
        # train.ema: the moving average of the weights (nmt.ema), validated and saved by rank 0 only
        self.average = copy.deepcopy(self.model).requires_grad_(False) if self.tc.ema > 0 and self.dist.is_main \
            else None
        self.ddp_model = self.dist.wrap(self.model)
        self.ddp_reverse = self.dist.wrap(self.reverse) if self.reverse is not None else None
        self.opt = torch.optim.Adam(self._parameters(), lr=self.tc.lr, betas=self.tc.adam_betas,
                                    eps=1e-9, weight_decay=self.tc.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.tc.amp == "fp16" else None
        self.step, self.epoch, self.position, self.elapsed = 0, 0, 0, 0.0
        self.best_bleu, self.bad_validations, self.lr_scale, self.plateau_bad = -1.0, 0, 1.0, 0
        self.stop = Stop()
        self.reverse_nll = 0.0  # the reverse model's nll per source token in the latest update (agreement)
        self.resumed = resume
        if resume:
            self._resume()

    def _fill_in(self, model_config, data_dir: Path):
        """The model fields the prepared data decides: the vocabulary size and the number of sources."""
        sources = self.train_data.sources
        if self.valid_data is not None and self.valid_data.sources != sources:
            raise NmtError(f"{data_dir}: valid.ids.pt has {self.valid_data.sources} source(s), train.ids.pt {sources}; "
                           "run nmt prepare again")
        if self.tc.agreement > 0 and sources > 1:
            raise NmtError(f"train.agreement trains a target->source model, which needs one source, but {data_dir} "
                           f"has {sources}" + (" (the sentence and its document context)" if self.train_data.context
                                               else ""))
        if self.tc.source_dropout > 0 and sources == 1:
            raise NmtError(f"train.source_dropout leaves out one of several sources, but {data_dir} has one "
                           "(nmt prepare --src-lang de --src-lang fr ...)")
        try:
            return replace(model_config, vocab_size=len(self.vocab), sources=sources)
        except ValueError as e:  # a switch that needs a single source, on multi-source data
            raise NmtError(f"{data_dir} has {sources} sources per example: {e}") from None

    @property
    def served(self):
        """The model that validation scores and best.pt/last.pt hold: the weights' average with
        train.ema, else the model itself."""
        return self.average if self.average is not None else self.model

    def _parameters(self) -> list:
        """What the optimizer updates: the model's parameters, then the reverse model's (agreement)."""
        return [*self.model.parameters(), *(self.reverse.parameters() if self.reverse is not None else ())]

    def _check_head(self, data_dir: Path) -> None:
        """train.guided_alignment needs the corpus's alignments; it and train.agreement need a
        layer and head the model's attention has."""
        from nmt.report import attention_shape

        if self.tc.guided_alignment > 0 and self.train_data.links is None:
            raise NmtError(f"train.guided_alignment needs gold alignments: {data_dir}/train.align.pt is missing "
                           "(nmt prepare --train-align FILE)")
        layers, heads = attention_shape(self.model, self.device)
        if not -layers <= self.tc.align_layer < layers or not 0 <= self.tc.align_head < heads:
            raise NmtError(f"train.align_layer {self.tc.align_layer} / train.align_head {self.tc.align_head}: the "
                           f"model's attention has {layers} layer(s) (-{layers}..{layers - 1}) of {heads} head(s)")

    def _valid_text(self, data_dir: Path):
        if not (data_dir / "valid.src").exists():
            return None
        src = (data_dir / "valid.src").read_text(encoding="utf-8").splitlines()
        ref = (data_dir / "valid.ref").read_text(encoding="utf-8").splitlines()
        if self.train_data.context:  # each line with the sentences before it (nmt.context)
            from nmt.context import read_doc_starts, with_context

            src = with_context(src, read_doc_starts(data_dir / "valid.docs", len(src)), self.train_data.context)
        n = self.tc.valid_max_sentences or len(src)
        return src[:n], ref[:n]

    def update_epoch(self) -> int:
        """The epoch of the latest update, counted from 1 (``self.epoch`` is the 0-based index of
        the epoch being read, which is one past the last after ``max_epochs``: position 0)."""
        return self.epoch if self.position == 0 and self.epoch > 0 else self.epoch + 1

    # -- one update ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        fn = SCHEDULES[self.tc.schedule]
        lr = fn(step, self.tc.lr, self.tc.warmup) * self.lr_scale
        return max(lr, self.tc.min_lr) if step >= self.tc.warmup else lr

    def update(self, batches: list) -> tuple[float, float, int] | None:
        """One optimizer update over ``batches`` (accumulated). Returns (loss/token, nll/token,
        target tokens), or None when the loss was not finite and the batch was skipped."""
        self.ddp_model.train()
        tokens = self.dist.sum(sum(b.target_tokens for b in batches))
        if self.tc.source_dropout > 0:  # a draw per (seed, update, batch, rank): a resumed run draws the same
            batches = [replace(b, src=drop_sources(b.src, self.train_data.sources, self.tc.source_dropout,
                                                   torch.Generator().manual_seed(
                                                       ((self.tc.seed * 1_000_003 + self.step) * 257 + i) * 4099
                                                       + self.dist.rank), keep_first=self.train_data.context > 0))
                       for i, b in enumerate(batches)]
        loss_total, nll_total, self.reverse_nll = 0.0, 0.0, 0.0
        for i, batch in enumerate(batches):
            if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
                batch = batch.apply(lambda t: t.pin_memory())
            batch = batch.to(self.device, non_blocking=True)
            with ExitStack() as sync:
                if i < len(batches) - 1:  # gradients are all-reduced after the last batch only
                    for ddp in (self.ddp_model, self.ddp_reverse):
                        if ddp is not None:
                            sync.enter_context(self.dist.no_sync(ddp))
                with autocast(self.device, self.tc.amp):
                    loss, nll = self._batch_loss(batch)
                scaled = loss * self.dist.world / tokens  # DDP averages over ranks: sum / all tokens
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_total += float(loss.detach())
            nll_total += float(nll)
        loss_total, nll_total = self.dist.sum_float(loss_total), self.dist.sum_float(nll_total)
        if self.reverse is not None:  # the reverse model predicts the sources: nll per source token
            self.reverse_nll = self.dist.sum_float(self.reverse_nll) / self.dist.sum(
                sum(int((b.src != PAD_ID).sum()) for b in batches))
        if not math.isfinite(loss_total):
            self.opt.zero_grad(set_to_none=True)
            if self.tc.nan_policy == "stop":
                saved = (f"; {self.out / 'last.pt'} holds the last saved state" if (self.out / "last.pt").exists()
                         else "")
                raise NmtError(f"loss became {loss_total} at update {self.step + 1}; lower train.lr or set "
                               f"train.nan_policy = \"skip\"{saved}")
            self.log(f"warning: non-finite loss at update {self.step + 1}; batch skipped")
            return None
        self.step += 1
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if self.tc.clip_norm > 0:  # each model on its own: the reverse model's gradients never shrink the forward's
            for model in (self.model, self.reverse):
                if model is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.tc.clip_norm)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.average is not None:
            ema_update(self.average, self.model, ema_decay(self.step, self.tc.ema))
        return loss_total / tokens, nll_total / tokens, tokens

    def _batch_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, nll) of one batch as scalar sums: the output loss plus every objective the config
        switches on."""
        lam, guide, agree = self.tc.coverage_loss, self.tc.guided_alignment, self.tc.agreement
        out = self.ddp_model(batch.src, batch.tgt_in, need_attention=lam > 0 or guide > 0 or agree > 0,
                             targets=batch.tgt_out, project=not fuse_output_projection(self.device))
        loss, nll = output_loss(out, batch.tgt_out, self.tc.label_smoothing)
        if out.aux_loss is not None:  # a mechanism's own objective (hard attention's REINFORCE surrogate)
            loss = loss + out.aux_loss
        if lam > 0:  # attention (B, L, H, T, S) -> averaged over layers and heads
            loss = loss + lam * coverage_loss(out.attention.float().mean((1, 2)), batch.tgt_out != PAD_ID)
        if guide > 0:  # one head of one layer against the gold links (nmt.guided)
            head = out.attention[:, self.tc.align_layer, self.tc.align_head].float()  # (B, T, S)
            loss = loss + guide * alignment_loss(head, batch.align)
        if agree > 0:  # the reverse model on the same pairs, and the two attentions' disagreement
            loss = loss + self._reverse_loss(batch, out)
        return loss, nll

    def _reverse_loss(self, batch: Batch, out) -> torch.Tensor:
        """The target->source model's loss on ``batch`` turned round, plus ``train.agreement`` x the
        agreement cost between the two models' attention at (align_layer, align_head): a scalar
        sum, divided with the rest by the forward target tokens (:mod:`nmt.agreement`)."""
        back = reverse_batch(batch)
        rout = self.ddp_reverse(back.src, back.tgt_in, need_attention=True, targets=back.tgt_out,
                                project=not fuse_output_projection(self.device))
        loss, nll = output_loss(rout, back.tgt_out, self.tc.label_smoothing)
        if rout.aux_loss is not None:
            loss = loss + rout.aux_loss
        self.reverse_nll += float(nll)
        layer, head = self.tc.align_layer, self.tc.align_head
        cost = agreement_cost(out.attention[:, layer, head], rout.attention[:, layer, head], batch,  # (B, T, S), (B, S, T)
                              self.tc.agreement_cost)
        return loss + self.tc.agreement * cost

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until a limit, early stopping or a stop request (SIGINT/SIGTERM: save, then stop);
        returns ``{"reason", "step", "best_bleu", "signal"}``."""
        if (spent := self._spent()) is not None:  # resumed at a limit it had reached: not one update more
            return self._finish(spent, nothing_done=True)
        if not self.resumed:
            self._start_fresh()
        self.stop.install()
        try:
            return self._run()
        finally:
            self.stop.uninstall()

    def _run(self) -> dict:
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.pt.*.tmp"):  # a write torn by kill -9; the real file is intact
            stale.unlink(missing_ok=True)
        if self.dist.is_main:
            settings = self.cfg.to_dict()  # data.dir absolute, so that --resume works from any folder
            settings["data"]["dir"] = str(Path(settings["data"]["dir"]).resolve())
            (self.out / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
        n_params = sum(p.numel() for p in self.model.parameters())
        reverse = " (and as many in the target->source model: train.agreement)" if self.reverse is not None else ""
        self.log(f"{self.cfg.model_kind}: {n_params:,} parameters{reverse}, {len(self.train_data):,} training pairs, "
                 f"device {self.device}, {torch.get_num_threads()} threads, amp {self.tc.amp}")
        if (warning := amp_warning(self.device, self.tc.amp)) is not None:
            self.log(warning)
        start = time.time() - self.elapsed
        bar = tqdm(total=self.tc.max_steps or None, initial=self.step, disable=not self.dist.is_main,
                   file=sys.stderr, dynamic_ncols=True, unit="upd")
        window_tokens, window_start, reason = 0, time.time(), "limit"
        metrics = open(self.out / "metrics.jsonl", "a") if self.dist.is_main else None
        try:
            while reason == "limit":
                batches = epoch_batches(self.train_data, self.tc.batch_tokens, self.tc.seed, self.epoch,
                                        self.dist.rank, self.dist.world)
                if len(batches) < self.tc.accumulate:  # no update would ever run: the loop would spin
                    raise NmtError(f"an epoch has {len(batches)} batch(es) per process but train.accumulate is "
                                   f"{self.tc.accumulate}: lower train.batch_tokens or train.accumulate, or use "
                                   "fewer processes")
                while self.position + self.tc.accumulate <= len(batches):
                    group = [self.train_data.collate(b) for b in
                             batches[self.position : self.position + self.tc.accumulate]]
                    result = self.update(group)
                    self.position += self.tc.accumulate
                    self.elapsed = time.time() - start
                    if result is not None:
                        loss, nll, tokens = result
                        window_tokens += tokens
                        rate = window_tokens / max(time.time() - window_start, 1e-9)
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.lr_at(self.step):.2e}", tok_s=f"{rate:.0f}",
                                        epoch=self.epoch + 1, **self._time_left())
                        if metrics and (self.step % self.tc.log_every == 0 or self._last_update(len(batches))):
                            metrics.write(json.dumps({"kind": "train", "step": self.step, "epoch": self.epoch + 1,
                                                      "loss": loss, "ppl": math.exp(min(nll, 50)),
                                                      "lr": self.lr_at(self.step), "tgt_tok_s": round(rate, 1),
                                                      **self._reverse_metrics(),
                                                      "elapsed_s": round(self.elapsed, 1),
                                                      "peak_rss_mb": round(peak_rss_mb(), 1)}) + "\n")
                            metrics.flush()
                            window_tokens, window_start = 0, time.time()
                    reason = self._after_update(metrics)
                    if reason != "limit":
                        break
                else:
                    self.epoch += 1
                    self.position = 0
                    if self.tc.max_epochs and self.epoch >= self.tc.max_epochs:
                        reason = "max_epochs"
        finally:
            bar.close()
            if metrics:
                metrics.close()
        return self._finish(reason)

    def _reverse_metrics(self) -> dict:
        """The reverse model's training perplexity for the log (agreement), else nothing."""
        return {"reverse_ppl": math.exp(min(self.reverse_nll, 50))} if self.reverse is not None else {}

    def _last_update(self, epoch_batches: int) -> bool:
        """Whether the run ends after this update (so that a run shorter than ``log_every`` logs its
        end too): a limit reached, or a stop requested. Rank 0's view, for its log only."""
        tc = self.tc
        epoch_ends = self.position + tc.accumulate > epoch_batches
        return bool((tc.max_steps and self.step >= tc.max_steps) or self.stop.requested
                    or (tc.max_minutes and self.elapsed >= tc.max_minutes * 60)
                    or (tc.max_epochs and epoch_ends and self.epoch + 1 >= tc.max_epochs))

    def _time_left(self) -> dict:
        """The minutes left of ``max_minutes`` for the progress bar: its ETA when minutes are the
        only budget, else ``min_left`` (tqdm shows the ETA of ``max_steps`` itself)."""
        if not self.tc.max_minutes:
            return {}
        left = max(0.0, self.tc.max_minutes - self.elapsed / 60)
        return {"min_left" if self.tc.max_steps else "eta": f"{left:.1f}min"}

    def _after_update(self, metrics) -> str:
        """Validate/save when due; return why to stop, or "limit" to go on."""
        tc = self.tc
        stop_now = self.dist.any(self.stop.requested)
        # every process must take the same branch below (validation and saves hold collectives),
        # and each reads its own clock: the time limit is agreed like the stop request
        out_of_time = bool(tc.max_minutes) and self.dist.any(self.elapsed >= tc.max_minutes * 60)
        out_of_steps = tc.max_steps and self.step >= tc.max_steps
        if self.step % tc.valid_every == 0 or out_of_time or out_of_steps:
            if self._validate(metrics):
                return "early_stopping"
        elif tc.save_every and self.step % tc.save_every == 0:
            self.save("last.pt")
        if stop_now:
            self.save("last.pt")
            return "interrupted"
        if out_of_time:
            return "max_minutes"
        if out_of_steps:
            return "max_steps"
        return "limit"

    def _validate(self, metrics) -> bool:
        """Valid loss/ppl/BLEU on rank 0, save best/last; True when early stopping says stop."""
        from nmt.validate import validate

        stop = False
        if self.dist.is_main:
            result = validate(self.served, self.vocab, self.valid_data, self.valid_text, self.tc, self.device)
            bleu = result.get("bleu")
            improved = bleu is None or bleu > self.best_bleu  # no valid text: best.pt is the latest
            if bleu is None:
                pass  # nothing to select by: early stopping and the plateau schedule do not count
            elif improved:
                self.best_bleu, self.bad_validations, self.plateau_bad = bleu, 0, 0
            else:
                self.bad_validations += 1
                self.plateau_bad += 1
                if self.tc.schedule == "plateau" and self.plateau_bad >= self.tc.plateau_patience:
                    self.lr_scale *= self.tc.plateau_factor
                    self.plateau_bad = 0
            result.update(kind="valid", step=self.step, epoch=self.update_epoch(), elapsed_s=round(self.elapsed, 1),
                          best_bleu=self.best_bleu)
            metrics.write(json.dumps(result) + "\n")
            metrics.flush()
            self.log(f"\nvalid @ {self.step}: " + (", ".join(f"{k} {v}" for k, v in result.items()
                                                              if k in ("loss", "ppl", "bleu")) or "no valid data"))
            if improved:
                self.save("best.pt", bleu)
            if self.tc.keep_last:
                self.save("last.pt", bleu)
            if self.tc.keep_checkpoints:
                self._snapshot(bleu)
            stop = bool(self.tc.patience and self.bad_validations >= self.tc.patience)
        return self.dist.any(stop)

    def _finish(self, reason: str, nothing_done: bool = False) -> dict:
        messages = {
            "interrupted": f"stopped on request; continue with: nmt train --out {self.out} --resume",
            "early_stopping": f"early stopping after {self.tc.patience} validations without improvement"
                              + (" (raise train.patience, or set it to 0, to go on)" if nothing_done else ""),
            "max_steps": "reached train.max_steps",
            "max_minutes": "reached train.max_minutes",
            "max_epochs": "reached train.max_epochs",
        }
        if reason == "max_epochs" and not nothing_done:
            self._validate_final()
        best = ("no valid text: best.pt is the latest checkpoint" if self.valid_text is None
                else f"best valid BLEU {self.best_bleu:.2f}" if self.best_bleu >= 0 else "not validated yet")
        first = "nothing to do, the run had stopped: " if nothing_done else ""  # raise the limit with --set to go on
        self.log(f"{first}{messages[reason]} (update {self.step}, {best}); run folder {self.out}")
        self.dist.close()
        return {"reason": reason, "step": self.step, "best_bleu": self.best_bleu, "signal": self.stop.signum}

    def _validate_final(self) -> None:
        with open(self.out / "metrics.jsonl", "a") as metrics:
            self._validate(metrics)


def train(config: RunConfig, out_dir: Path, resume: bool = False) -> dict:
    """Train into ``out_dir``: continue its run (``resume``), else start a new one there, deleting
    the checkpoints, snapshots and metrics of any earlier run first (``nmt train`` refuses such a
    folder unless given ``--overwrite``)."""
    return Trainer(config, out_dir, resume).run()
