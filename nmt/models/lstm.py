"""LSTM encoder-decoder with attention, every design choice of the attention lecture a switch.

Encoder: a bidirectional LSTM; per source word one vector ``h_s = [->h_s; <-h_s]`` (D = hidden_size),
because one vector cannot hold a sentence. Decoder: an LSTM that attends over the ``h_s`` at every
step. Where the attention sits (``attention_position``):

``"after"`` (Luong et al. 2015)::

    s_t  = LSTM(s_{t-1}, [E y_{t-1}; h~_{t-1} if input_feeding])
    c_t  = sum_s a_ts h_s,   a_t = softmax(score(s_t, h_s))     # query: this step's LSTM output
    h~_t = tanh(W_c [c_t; s_t]);   p(y_t) = softmax(W_o h~_t)

``"before"`` (Bahdanau et al. 2015)::

    c_t  = sum_s a_ts h_s,   a_t = softmax(score(s_{t-1}, h_s)) # query: the previous state
    s_t  = LSTM(s_{t-1}, [E y_{t-1}; c_t; h~_{t-1} if input_feeding])
    h~_t = tanh(W_c [c_t; s_t]);   p(y_t) = softmax(W_o h~_t)

Trade-off (the lecture's note): after the LSTM, the recurrence never sees the context unless
input feeding brings it back, and the LSTM's output can be diluted by the context in ``h~``;
before the LSTM, the recurrence integrates the context at every step, but the query is one
step old.

Teacher forcing runs the same :meth:`step` over the target, so incremental decoding equals
teacher-forced decoding by construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.attention import SCORES, RecurrentAttention
from nmt.copy import copy_mix
from nmt.hard import (BASELINE_DECAY, choose_positions, entropy, marginal_log_probs, reinforce_loss,
                      sample_log_prob, sentence_reward)
from nmt.monotonic import chunkwise, expected_alignment, hard_alignment
from nmt.models.dropout import Dropout
from nmt.models.output import ModelOutput, step_log_probs
from nmt.multisource import merge_rows, source_index, source_rows
from nmt.vocab import PAD_ID


@dataclass
class LSTMConfig:
    """Shape and attention switches of the LSTM model. Defaults: a Luong-style 2-layer model."""

    embed_size: int = 256  # embedding size (shared source/target/output vocabulary)
    hidden_size: int = 256  # decoder size = encoder output size (each encoder direction gets half)
    encoder_layers: int = 2  # bidirectional encoder layers
    decoder_layers: int = 2  # decoder LSTM layers
    dropout: float = 0.3  # on embeddings, between LSTM layers and before the output layer
    score: str = "general"  # attention score: dot | general | mlp | scaled_dot
    attention_hidden: int = 0  # hidden size of the mlp score (0 = hidden_size)
    attention_position: str = "after"  # after (Luong: query = this step's output) | before (Bahdanau)
    input_feeding: bool = True  # feed h~_{t-1} into the next LSTM input (Luong et al. 2015)
    separate_values: bool = False  # project encoder states into values apart from keys
    heads: int = 1  # attention heads (each with its own projections when > 1)
    bridge: str = "learned"  # decoder's initial state: learned (from the encoder's final states) | zero
    tie_embeddings: bool = True  # output layer shares the embedding matrix (needs embed_size == hidden_size)
    # -- the attention family (all off by default; see docs/attention-family.md) --
    coverage: bool = False  # Tu et al. 2016: c_t = sum_{tau<t} a_tau enters the score (mlp: in the tanh; else a bias)
    location_filters: int = 0  # Chorowski et al. 2015: conv filters over a_{t-1} entering the score (0 = off)
    location_width: int = 5  # width of that convolution (odd)
    local: str = "none"  # Luong et al. 2015 local attention: none | p (predicted centre) | m (centre = t)
    local_window: int = 5  # D: weights outside [p_t - D, p_t + D] are exactly 0; Gaussian with sigma = D/2
    copy: bool = False  # See et al. 2017 pointer-generator: mix copied attention into the output distribution
    monotonic: bool = False  # Raffel et al. 2017: expected alignment in training, hard left-to-right scan in eval
    monotonic_chunk: int = 0  # MoChA (Chiu & Raffel 2018): softmax over the chunk of w positions ending at the stop
    monotonic_noise: float = 1.0  # std of the Gaussian noise added to the energies in training (pushes p to 0/1)
    # Xu et al. 2015 hard attention: one position per step. reinforce: sampled in training (REINFORCE with a
    # moving-average baseline); exact: marginalised over positions (Shankar et al. 2018, O(S V) per token);
    # both take the argmax position at inference
    hard: str = "none"  # none | reinforce | exact
    hard_entropy: float = 0.01  # entropy bonus lambda_H of REINFORCE
    vocab_size: int = 8000  # filled in from the SentencePiece model at training time
    # source sentences per example, filled in from the prepared data (nmt.multisource): one shared encoder,
    # the decoder attends over all sources' states at once (flat; the Transformer has serial and hierarchical too)
    sources: int = 1

    def __post_init__(self):
        checks = [
            (self.sources >= 1, f"model.sources must be >= 1, got {self.sources}"),
            (self.sources == 1 or (self.local == "none" and not self.monotonic),
             "model.local and model.monotonic read one source left to right: they need a single source"),
            (self.score in SCORES, f"model.score must be one of {', '.join(SCORES)}, got {self.score!r}"),
            (self.attention_position in ("after", "before"),
             f"model.attention_position must be after or before, got {self.attention_position!r}"),
            (self.bridge in ("learned", "zero"), f"model.bridge must be learned or zero, got {self.bridge!r}"),
            (self.hidden_size % 2 == 0, "model.hidden_size must be even (two encoder directions)"),
            (not self.tie_embeddings or self.embed_size == self.hidden_size,
             "model.tie_embeddings needs embed_size == hidden_size"),
            (self.heads >= 1, f"model.heads must be >= 1, got {self.heads}"),
            (self.hidden_size % max(self.heads, 1) == 0, "model.heads must divide hidden_size"),
            (self.attention_hidden >= 0, f"model.attention_hidden must be >= 0 (0 = hidden_size), got "
                                         f"{self.attention_hidden}"),
            (self.location_filters >= 0, f"model.location_filters must be >= 0 (0 = off), got {self.location_filters}"),
            (self.monotonic_chunk >= 0, f"model.monotonic_chunk must be >= 0 (0 = off), got {self.monotonic_chunk}"),
            (self.monotonic or not self.monotonic_chunk, "model.monotonic_chunk needs model.monotonic = true"),
            (self.monotonic_noise >= 0, f"model.monotonic_noise must be >= 0, got {self.monotonic_noise}"),
            (self.hard_entropy >= 0, f"model.hard_entropy must be >= 0, got {self.hard_entropy}"),
            (self.local in ("none", "p", "m"), f"model.local must be none, p or m, got {self.local!r}"),
            (self.location_width % 2 == 1, "model.location_width must be odd"),
            (self.local_window >= 1, "model.local_window must be >= 1"),
            (self.local != "none" or self.local_window == _default(LSTMConfig, "local_window"),  # else it does nothing
             f"model.local_window = {self.local_window} sets local attention's window: it needs model.local = "
             "\"p\" or \"m\""),
            (not (self.monotonic and self.local != "none"), "model.monotonic and model.local exclude each other"),
            (self.hard in ("none", "reinforce", "exact"), f"model.hard must be none, reinforce or exact, got {self.hard!r}"),
            (not (self.hard != "none" and self.monotonic), "model.hard and model.monotonic exclude each other"),
            (self.hard != "exact" or (self.heads == 1 and not self.copy), "model.hard = exact needs heads = 1 and no copy"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _default(cls, name: str):
    """A dataclass field's default value."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


class LSTMModel(nn.Module):
    """Bidirectional LSTM encoder + attentional LSTM decoder; the ``encode/init_state/step/forward``
    contract of :mod:`nmt.models`."""

    def __init__(self, c: LSTMConfig):
        super().__init__()
        self.config = c
        h = c.hidden_size
        self.embed = nn.Embedding(c.vocab_size, c.embed_size, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, 0.0, c.embed_size**-0.5)
        self.drop = Dropout(c.dropout)
        # several sources share the encoder; a learned vector per source, added to its embeddings, tells them apart
        self.source_embed = nn.Embedding(c.sources, c.embed_size) if c.sources > 1 else None
        self.encoder = nn.LSTM(c.embed_size, h // 2, c.encoder_layers, batch_first=True, bidirectional=True,
                               dropout=c.dropout if c.encoder_layers > 1 else 0.0)
        self.bridge = nn.ModuleList(nn.Linear(h, h) for _ in range(2)) if c.bridge == "learned" else None
        extra = h if c.attention_position == "before" else 0
        feed = h if c.input_feeding else 0
        self.decoder = nn.LSTM(c.embed_size + extra + feed, h, c.decoder_layers, batch_first=True,
                               dropout=c.dropout if c.decoder_layers > 1 else 0.0)
        features = int(c.coverage) + c.location_filters
        self.attention = RecurrentAttention(c.score, h, h, c.heads, c.separate_values, c.attention_hidden or h, features)
        self.location = (nn.Conv1d(1, c.location_filters, c.location_width, padding=c.location_width // 2, bias=False)
                         if c.location_filters else None)
        self.local_p = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, c.heads)) if c.local == "p" else None
        self.copy_gate = nn.Linear(2 * h + c.embed_size, 1) if c.copy else None  # p_gen from [c_t; s_t; x_t]
        self.mono_bias = nn.Parameter(torch.zeros(1)) if c.monotonic else None  # r in p = sigmoid(e + r)
        self.combine = nn.Linear(2 * h, h, bias=False)  # W_c [c_t; s_t]
        self.output = None if c.tie_embeddings else nn.Linear(h, c.vocab_size, bias=False)
        if c.hard == "reinforce":  # moving average of the reward (NaN until the first training batch)
            self.register_buffer("hard_baseline", torch.full((), float("nan")))

    def encode(self, src: Tensor, need_attention: bool = False) -> dict[str, Tensor]:
        """src ``(B, S)`` -> memory ``(B, S, H)`` (zeros at padding), src_mask ``(B, S)``, and the
        final states ``h_n``/``c_n`` ``(B, layers, H)`` (both directions concatenated). With N
        sources side by side in src (:mod:`nmt.multisource`) each is encoded on its own row, the
        memory keeps that layout and the final states are averaged over the sources."""
        n = self.config.sources
        rows = source_rows(src, n)  # (B*N, S')
        mask = rows != PAD_ID
        lengths = mask.sum(1).clamp(min=1).cpu()
        emb = self.embed(rows)  # (B*N, S', E)
        if self.source_embed is not None:
            emb = emb + self.source_embed(source_index(rows.shape[0], n, src.device))[:, None]
        packed = pack_padded_sequence(self.drop(emb), lengths, batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=rows.shape[1])  # (B*N, S', H)

        def merge(x: Tensor) -> Tensor:  # (layers*2, B*N, H/2) -> (B, layers, H), the mean over sources
            layers, bn = x.shape[0] // 2, x.shape[1]
            x = x.view(layers, 2, bn, -1).permute(2, 0, 1, 3).reshape(bn, layers, -1)
            return x.view(bn // n, n, layers, -1).mean(1) if n > 1 else x

        return {"memory": merge_rows(memory, n), "src_mask": merge_rows(mask, n), "h_n": merge(h_n),
                "c_n": merge(c_n), "src_ids": src}

    def init_state(self, enc: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch-first state: h, c ``(B, L, H)``, the attentional vector ``feed`` ``(B, H)``, the
        source mask and the attention's per-sentence keys/values (projected once here)."""
        c = self.config
        b = enc["memory"].shape[0]
        h_n, c_n = enc["h_n"][:, -1:], enc["c_n"][:, -1:]  # top encoder layer (B, 1, H)
        if self.bridge is not None:
            h0 = torch.tanh(self.bridge[0](h_n)).expand(-1, c.decoder_layers, -1).contiguous()
            c0 = self.bridge[1](c_n).expand(-1, c.decoder_layers, -1).contiguous()
        else:
            h0 = c0 = enc["memory"].new_zeros(b, c.decoder_layers, c.hidden_size)
        state = {"h": h0, "c": c0, "feed": enc["memory"].new_zeros(b, c.hidden_size), "src_mask": enc["src_mask"]}
        state.update({f"src_{k}": v for k, v in self.attention.prepare(enc["memory"]).items()})
        zeros = enc["memory"].new_zeros(b, c.heads, enc["memory"].shape[1])  # (B, N, S)
        if c.coverage:
            state["coverage"] = zeros  # sum of the attention of all previous steps (exclusive)
        if c.location_filters:
            state["prev_attn"] = zeros  # a_{t-1}
        if c.local != "none":
            state["t"] = enc["src_mask"].new_zeros(b, dtype=torch.long)
        if c.copy:
            state["src_ids"] = enc["src_ids"]
        if c.monotonic:
            state["mono_prev"] = zeros.clone()
            state["mono_prev"][..., 0] = 1.0  # alpha_0: everything at the first position
            state["mono_pos"] = enc["src_mask"].new_zeros(b, c.heads, dtype=torch.long)
        return state

    def _features(self, state: dict[str, Tensor]) -> Tensor | None:
        """Per-position features of the score ``(B, N, S, F)``: coverage, location convolution."""
        feats = []
        if "coverage" in state:
            feats.append(state["coverage"][..., None])  # (B, N, S, 1)
        if self.location is not None:
            b, n, s = state["prev_attn"].shape
            conv = self.location(state["prev_attn"].reshape(b * n, 1, s))  # (B*N, K, S)
            feats.append(conv.view(b, n, -1, s).transpose(2, 3))  # (B, N, S, K)
        return torch.cat(feats, -1) if feats else None

    def _window(self, query: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """Local attention: centre p_t per head, window mask ``|s - p_t| <= D`` and Gaussian factor
        ``exp(-(s - p_t)^2 / (2 sigma^2))``, sigma = D / 2. local-p: ``p_t = S * sigmoid(v^T tanh(W q))``;
        local-m: ``p_t = t`` (clamped to the last source position)."""
        c = self.config
        if c.local == "none":
            return None
        length = state["src_mask"].sum(1, keepdim=True).float()  # (B, 1)
        if c.local == "p":
            centre = length * torch.sigmoid(self.local_p(query))  # (B, N)
        else:
            centre = torch.minimum(state["t"][:, None].float(), length - 1).expand(-1, c.heads)
        pos = torch.arange(state["src_mask"].shape[1], device=query.device, dtype=torch.float32)
        dist = pos[None, None] - centre[..., None]  # (B, N, S)
        sigma = c.local_window / 2
        return dist.abs() <= c.local_window, torch.exp(-dist**2 / (2 * sigma**2))

    def _attend(self, query: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor], dict]:
        """Context ``(B, H)``, weights ``(B, N, S)``, the state entries this attention updates, and
        what hard attention's training needs (``hard_logp``/``hard_entropy`` ``(B,)``, or the soft
        weights for exact marginalisation)."""
        prepared = {k[4:]: v for k, v in state.items() if k.startswith("src_att_")}
        features = self._features(state)
        if not self.config.monotonic:
            context, weights = self.attention(query, prepared, state["src_mask"], features, self._window(query, state))
            if self.config.hard == "none":
                return context, weights, {}, {}
            context, weights, extras = self._harden(context, weights, prepared)
            return context, weights, {}, extras
        c, mask = self.config, state["src_mask"]
        energies = self.attention.raw_scores(query, prepared, features)[:, :, 0] + self.mono_bias  # (B, N, S)
        if self.training:
            noisy = energies + c.monotonic_noise * torch.randn_like(energies) if c.monotonic_noise else energies
            alpha = expected_alignment(torch.sigmoid(noisy), state["mono_prev"], mask)
            updates = {"mono_prev": alpha}
        else:
            alpha, pos = hard_alignment(torch.sigmoid(energies), state["mono_pos"], mask)
            updates = {"mono_prev": alpha, "mono_pos": pos}
        weights = chunkwise(alpha, energies, mask, c.monotonic_chunk) if c.monotonic_chunk else alpha
        return self.attention.mix(weights, prepared), weights, updates, {}

    def _harden(self, context: Tensor, weights: Tensor, prepared: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        """Hard attention: context and one-hot weights of the chosen position (sampled when training
        with REINFORCE, else argmax); exact marginalisation in training keeps the soft weights."""
        c = self.config
        if self.training and c.hard == "exact":
            return context, weights, {"soft": weights}
        sample = self.training and c.hard == "reinforce"
        one_hot = choose_positions(weights.detach(), sample)  # (B, N, S)
        extras = {"hard_logp": sample_log_prob(weights, one_hot), "hard_entropy": entropy(weights)} if sample else {}
        return self.attention.mix(one_hot, prepared), one_hot, extras

    def _decode(self, tokens: Tensor, state: dict[str, Tensor], emb: Tensor | None = None):
        """One step up to the attentional vector h~_t ``(B, H)``. Returns h~_t, the new state, the
        weights ``(B, N, S)`` and extras: ``p_gen (B, 1)`` with copy, hard attention's training
        terms, and for exact marginalisation the per-position vectors ``per_position (B, S, H)``.
        ``emb (B, E)``: the tokens' embeddings after dropout, when the caller has them already."""
        c = self.config
        if emb is None:
            emb = self.drop(self.embed(tokens))  # (B, E)
        parts = [emb]
        if c.attention_position == "before":
            context, weights, updates, extras = self._attend(state["h"][:, -1], state)  # query: s_{t-1}
            parts.append(context)
        if c.input_feeding:
            parts.append(state["feed"])
        hc = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())  # (L, B, H)
        out, (h, cell) = self.decoder(torch.cat(parts, -1)[:, None], hc)
        s_t = out[:, 0]  # (B, H)
        if c.attention_position == "after":
            context, weights, updates, extras = self._attend(s_t, state)  # query: s_t
        if "soft" in extras:  # exact: h~_i = tanh(W_c [v_i; s_t]) for every position i; feed = sum_i a_i h~_i
            w_v, w_s = self.combine.weight.split(self.config.hidden_size, dim=1)
            values = state["src_att_v"][:, 0]  # (B, S, H)
            extras["per_position"] = torch.tanh(F.linear(values, w_v) + F.linear(s_t, w_s)[:, None])  # (B, S, H)
            feed = (extras["soft"][:, 0, :, None] * extras["per_position"]).sum(1)  # (B, H)
        else:
            feed = torch.tanh(self.combine(torch.cat([context, s_t], -1)))  # h~_t (B, H)
        new = {**state, **updates, "h": h.transpose(0, 1), "c": cell.transpose(0, 1), "feed": feed}
        if "coverage" in state:
            new["coverage"] = state["coverage"] + weights
        if "prev_attn" in state:
            new["prev_attn"] = weights
        if "t" in state:
            new["t"] = state["t"] + 1
        if self.copy_gate is not None:
            extras["p_gen"] = torch.sigmoid(self.copy_gate(torch.cat([context, s_t, emb], -1)))
        return feed, new, weights, extras

    def _project(self, x: Tensor) -> Tensor:
        x = self.drop(x)
        return F.linear(x, self.embed.weight) if self.output is None else self.output(x)

    def _output_weight(self) -> Tensor:
        return self.embed.weight if self.output is None else self.output.weight  # (V, H)

    def _output(self, feed: Tensor, weights: Tensor, extras: dict, src_ids: Tensor) -> Tensor:
        """Logits ``(B, [T,] V)``; with copy (or exact hard attention), the log of the mixture
        (which log_softmax leaves unchanged, so it serves as logits for the loss and the search)."""
        if "per_position" in extras:  # exact: log sum_i a_i softmax(W_o h~_i)
            return marginal_log_probs(extras["soft"][..., 0, :], self._project(extras["per_position"]))
        logits = self._project(feed)
        p_gen = extras.get("p_gen")
        if p_gen is None:
            return logits
        mixed = copy_mix(torch.softmax(logits.float(), -1), weights.mean(1), src_ids, p_gen)
        return torch.log(mixed.clamp_min(1e-12))

    def step(self, tokens: Tensor, state: dict[str, Tensor], need_attention: bool = False):
        """tokens ``(B,)`` -> log-probs ``(B, V)``, new state, attention ``(B, 1, N, S)``."""
        feed, new, weights, extras = self._decode(tokens, state)
        logp = step_log_probs(self._output(feed, weights, extras, state.get("src_ids")))  # (B, V)
        return logp, new, (weights[:, None] if need_attention else None)

    def forward(self, src: Tensor, tgt_in: Tensor, need_attention: bool = False,
                targets: Tensor | None = None, project: bool = True) -> ModelOutput:
        """Teacher forcing through :meth:`step`'s own computation: logits ``(B, T, V)``, attention
        ``(B, 1, N, T, S)``, and with hard = reinforce in training (given ``targets (B, T)``) the
        REINFORCE surrogate as the auxiliary loss. With ``project=False`` and a plain output layer
        (no copy, no hard attention), ``projection = (dropout(feed) (B, T, H), weight (V, H))``
        replaces the logits."""
        state = self.init_state(self.encode(src))
        # one lookup (and one dense gradient) for all steps; unbind: one stack of the step gradients
        embs = self.drop(self.embed(tgt_in)).unbind(1)  # T x (B, E)
        feeds, weights, steps = [], [], []
        for t in range(tgt_in.shape[1]):
            feed, state, w, extras = self._decode(tgt_in[:, t], state, embs[t])
            feeds.append(feed)
            weights.append(w)
            steps.append(extras)
        attn = torch.stack(weights, 2)  # (B, N, T, S)
        extras = {k: torch.stack([e[k] for e in steps], 1) for k in steps[0]}  # each (B, T, ...)
        if not project and not extras:  # a plain output layer: leave the product to the loss
            return ModelOutput(None, attn[:, None] if need_attention else None,
                               projection=(self.drop(torch.stack(feeds, 1)), self._output_weight()))
        logits = self._output(torch.stack(feeds, 1), attn, extras, src)  # one output projection for all steps
        aux = self._reinforce(logits, extras, targets) if "hard_logp" in extras and targets is not None else None
        return ModelOutput(logits, attn[:, None] if need_attention else None, aux)

    def _reinforce(self, logits: Tensor, extras: dict, targets: Tensor) -> Tensor:
        """The REINFORCE surrogate of the sampled positions; updates the moving-average baseline."""
        mask = targets != PAD_ID
        x = logits.float()
        token_logp = x.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(x, -1)  # (B, T), no (B, T, V) copy
        reward = sentence_reward(token_logp, mask)  # (B,)
        mean = reward.mean()
        # NaN until the first batch: start the average there (torch.where: no host sync on a GPU)
        baseline = torch.where(torch.isnan(self.hard_baseline), mean, self.hard_baseline)
        loss = reinforce_loss(extras["hard_logp"], reward, mask, baseline, extras["hard_entropy"],
                              self.config.hard_entropy)
        with torch.no_grad():
            self.hard_baseline.copy_(BASELINE_DECAY * baseline + (1 - BASELINE_DECAY) * mean)
        return loss
