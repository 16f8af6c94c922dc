"""Image LSH attention (SCT eq. 3): Reformer-style LSH attention over all tokens of a frame."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from chunkformer._deprecation import renamed_kwargs
from chunkformer.layers._checks import check_heads, check_input, check_positive_int, check_probability
from chunkformer.ops import lsh_attention

# State-dict entries of LSHAttention besides its Linear layers (see the class docstring).
SEED_KEY = "seed"
GENERATOR_STATE_PREFIX = "generator_state."
# Before state dicts held tensors only: one "_extra_state" entry, {"seed": int, "generator_states": {...}}.
LEGACY_EXTRA_STATE_KEY = "_extra_state"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def is_rng_state_key(local_key: str) -> bool:
    """Whether ``local_key`` (relative to an LSHAttention) names its seed or a generator state, in the current
    or the legacy format."""
    return local_key in (SEED_KEY, LEGACY_EXTRA_STATE_KEY) or local_key.startswith(GENERATOR_STATE_PREFIX)


def upgrade_legacy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every legacy LSHAttention entry ``<layer>._extra_state`` (a dict ``{"seed": int,
    "generator_states": {device: uint8 tensor}}``) replaced by the current tensor entries ``<layer>.seed`` and
    ``<layer>.generator_state.<device>``. Every other entry is kept, other modules' extra state (a value
    without a ``"seed"``) included.

    Raises:
        ValueError: a legacy entry that is malformed or that sits next to a current-format entry of its layer.
    """
    upgraded: dict[str, Any] = {}
    for key, value in state.items():
        is_legacy = key == LEGACY_EXTRA_STATE_KEY or key.endswith("." + LEGACY_EXTRA_STATE_KEY)
        if not (is_legacy and isinstance(value, Mapping) and "seed" in value):
            upgraded[key] = value
            continue
        upgraded.update(_legacy_entries(key, value, state))
    return upgraded


def _legacy_entries(key: str, value: object, keys: Collection[str]) -> dict[str, Any]:
    """The current-format entries of the legacy extra state ``value`` (under ``key``, beside ``keys``)."""
    seed = value.get("seed") if isinstance(value, Mapping) else None
    generators = value.get("generator_states", {}) if isinstance(value, Mapping) else None
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int)
        or not _INT64_MIN <= seed <= _INT64_MAX
        or not isinstance(generators, Mapping)
    ):
        raise ValueError(
            f"{key}: expected an old-format LSHAttention extra state {{'seed': int64, 'generator_states': "
            f"{{device: uint8 tensor}}}}, got {_describe(value)}"
        )
    layer = key[: -len(LEGACY_EXTRA_STATE_KEY)]
    entries: dict[str, Any] = {layer + SEED_KEY: torch.tensor(seed, dtype=torch.int64)}
    for device, generator_state in generators.items():
        entries[f"{layer}{GENERATOR_STATE_PREFIX}{device}"] = generator_state
    clash = sorted(
        other
        for other in keys
        if other != key and other.startswith(layer) and is_rng_state_key(other[len(layer) :])
    )
    if clash:
        raise ValueError(f"{key}: an old-format LSHAttention extra state next to the current entries {clash}")
    return entries


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:200]


def _seed(key: str, value: object) -> int:
    if (
        not isinstance(value, torch.Tensor)
        or value.dim() != 0
        or value.dtype.is_floating_point
        or value.dtype.is_complex
        or value.dtype == torch.bool
    ):
        raise ValueError(
            f"{key}: expected the LSHAttention seed as an int 0-d tensor, got {_describe(value)}"
        )
    return int(value)


def _generator_state(key: str, value: object) -> torch.Tensor:
    """A copy of ``value`` on the CPU (where torch.Generator.set_state wants it), checked to be uint8 1-D."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise ValueError(f"{key}: expected a generator state as a uint8 1-D tensor, got {_describe(value)}")
    return value.detach().to("cpu", copy=True).contiguous()


class LSHAttention(nn.Module):
    """Multi-head angular-LSH attention (``chunkformer.ops.lsh_attention``) with its projections.

    A (B, H, W, C) or (B, T, H, W, C) input is one sequence per image (the paper's image LSH attention over
    all tokens of a frame); a (B, N, C) input is one sequence per batch element.

    Randomness: the module owns its generators (one per device). In training every call draws fresh
    rotations from them; in evaluation every call uses the rotations of ``seed``, so inference is
    reproducible. The global RNG is never used in forward. With ``seed=None`` a seed is drawn from the global
    RNG once, at construction (like weight init). The seed and the generator states are part of the state
    dict, as tensors, so a resumed run continues the same sequence of rotations:

    - ``seed``: int64, 0-d.
    - ``generator_state.<device>`` (e.g. ``generator_state.cpu``, ``generator_state.cuda:0``): uint8, the
      state of the training generator for that device; one entry per device the module has trained on, none
      before the first training call (the generator then starts at ``seed``).

    They are state-dict entries, not buffers: the seed stays a Python int (so the module builds on the meta
    device and keeps its seed through ``to_empty``), ``.to(device)`` leaves the generators alone, and forward
    (also under ``torch.compile``) touches no tensor state. Loading replaces the seed and all generators;
    a generator state is restored on first use on its device, so a checkpoint written on CUDA also loads on
    a machine without one. A device without a state of its own continues from that of another device of its
    type (a DDP rank on ``cuda:1`` resuming from rank 0's ``cuda:0``). Old state dicts, whose
    ``_extra_state`` held ``{"seed": int, "generator_states": {device: state}}``, still load.

    Args:
        dim: token width C.
        num_heads: heads; must divide ``dim``.
        bucket_size: LSH block length.
        n_hashes: hash rounds.
        is_causal: strictly causal attention over the sequence order (row-major for images). Its old name
            ``causal`` still works, with a FutureWarning, for one release.
        shared_qk: Reformer's shared-QK attention (keys are the normalised queries; no key projection).
        qkv_bias: bias in the input projection.
        attn_drop: dropout on the attention weights (training only; masks from the module's generator).
        proj_drop: dropout after the output projection.
        seed: seed of the rotations.
        layout: how a 4-D input reads, which its shape cannot tell: ``"bhwc"``, (B, H, W, C) images, one
            sequence of H x W tokens per image; ``"btnc"``, (B, T, N, C) frame tokens as ``ShiftedAttention``
            takes them, one sequence of N tokens per frame. None (the default) refuses 4-D inputs with an
            error naming both. 3-D and 5-D inputs need no layout.

    Shape:
        - x: (B, N, C) -> (B, N, C); key_padding_mask: (B, N), True = padding
        - x: (B, H, W, C) -> (B, H, W, C) with ``layout="bhwc"``; key_padding_mask: (B, H, W)
        - x: (B, T, N, C) -> (B, T, N, C) with ``layout="btnc"``; key_padding_mask: (B, T, N)
        - x: (B, T, H, W, C) -> (B, T, H, W, C), one sequence per frame; key_padding_mask: (B, T, H, W)
    """

    @renamed_kwargs("LSHAttention", causal="is_causal")
    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        bucket_size: int = 64,
        n_hashes: int = 4,
        is_causal: bool = False,
        shared_qk: bool = True,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        seed: int | None = None,
        layout: Literal["bhwc", "btnc"] | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = check_heads(dim, num_heads, "LSHAttention")
        if layout not in (None, "bhwc", "btnc"):
            raise ValueError(f"LSHAttention: layout must be 'bhwc', 'btnc' or None, got {layout!r}")
        self.layout = layout
        self.dim = dim
        self.num_heads = num_heads
        self.bucket_size = check_positive_int(bucket_size, "bucket_size", "LSHAttention")
        self.n_hashes = check_positive_int(n_hashes, "n_hashes", "LSHAttention")
        self.is_causal = bool(is_causal)
        self.shared_qk = bool(shared_qk)
        self.attn_drop = check_probability(attn_drop, "attn_drop", "LSHAttention")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"LSHAttention: seed must be an int or None, got {type(seed).__name__} {seed!r}")
        if seed is not None and not _INT64_MIN <= seed <= _INT64_MAX:
            # The state dict holds the seed as an int64 tensor.
            raise ValueError(f"LSHAttention: seed must fit in int64 ([-2**63, 2**63 - 1]), got {seed}")
        # Drawn on the CPU explicitly so a model can be built under `with torch.device("meta")`.
        self.seed = int(torch.randint(0, 2**62, (), device="cpu").item()) if seed is None else seed
        # Shared QK has no key projection: q and v only.
        self.qkv = nn.Linear(dim, (2 if self.shared_qk else 3) * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(check_probability(proj_drop, "proj_drop", "LSHAttention"))
        # Training generators by device, and loaded states not yet restored into one (a device is in at most
        # one of the two). Mutated in place, never rebound: DataParallel replicas share these dicts.
        self._generators: dict[str, torch.Generator] = {}
        self._pending_states: dict[str, torch.Tensor] = {}

    @property
    def causal(self) -> bool:
        """The old name of ``is_causal``, read-only, for one release."""
        warnings.warn("LSHAttention.causal is now LSHAttention.is_causal", FutureWarning, stacklevel=2)
        return self.is_causal

    def _generator(self, device: torch.device) -> torch.Generator:
        """Training: this module's advancing generator for ``device``. Eval: a fresh one at ``seed``."""
        key = str(device)
        if not self.training:
            return torch.Generator(device=device).manual_seed(self.seed)
        generator = self._generators.get(key)
        if generator is None:
            generator = torch.Generator(device=device)
            source = self._state_source(device)
            if source is None:
                generator.manual_seed(self.seed)
            else:
                state = self._pending_states[source]
                try:
                    generator.set_state(state)
                except RuntimeError as error:
                    raise RuntimeError(
                        f"LSHAttention: the loaded generator state for {source} ({state.numel()} bytes) does "
                        f"not fit a {key} generator: {error}"
                    ) from error
                if source == key:
                    del self._pending_states[key]
            self._generators[key] = generator
        return generator

    def _state_source(self, device: torch.device) -> str | None:
        """The loaded state a new generator for ``device`` starts from: that device's own, else the first of
        another device of its type (a DDP rank on cuda:1 resuming rank 0's checkpoint from cuda:0, whose
        generators drew the same as every rank's), else none (start at ``seed``)."""
        key = str(device)
        if key in self._pending_states:
            return key
        same_type = sorted(other for other in self._pending_states if other.split(":")[0] == device.type)
        return same_type[0] if same_type else None

    def generator_states(self) -> dict[str, torch.Tensor]:
        """The training generators' states by device (``str(device)``), as uint8 CPU tensors of their own."""
        states = {key: generator.get_state() for key, generator in self._generators.items()}
        states.update({key: state.clone() for key, state in self._pending_states.items()})
        return dict(sorted(states.items()))

    def set_generator_states(self, states: Mapping[str, torch.Tensor]) -> None:
        """Replace every training generator: a device in ``states`` continues from its state (restored on
        first use there), any other device starts again at ``seed``."""
        pending = {key: _generator_state(f"generator state {key!r}", state) for key, state in states.items()}
        self._generators.clear()
        self._pending_states.clear()
        self._pending_states.update(pending)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_input(
            x,
            "LSHAttention",
            {3: "(B, N, C)", 4: "(B, H, W, C) or (B, T, N, C)", 5: "(B, T, H, W, C)"},
            self.dim,
        )
        if x.dim() == 4 and self.layout is None:
            raise ValueError(
                f"LSHAttention got a 4-D input {tuple(x.shape)}, which reads either as (B, H, W, C) "
                "images (one sequence per image) or as (B, T, N, C) frame tokens (one sequence per "
                "frame): build the layer with layout='bhwc' or layout='btnc'"
            )
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"LSHAttention expects key_padding_mask of shape {tuple(x.shape[:-1])} (the input without "
                f"its channel axis), got {tuple(key_padding_mask.shape)}"
            )
        shape = x.shape
        tokens = x.reshape(-1, self.sequence_length(x), self.dim)
        mask = None if key_padding_mask is None else key_padding_mask.reshape(tokens.shape[:2])
        parts = 2 if self.shared_qk else 3
        projected = rearrange(
            self.qkv(tokens), "b n (parts h d) -> parts b h n d", parts=parts, h=self.num_heads
        )
        q, v = projected[0], projected[-1]
        k = None if self.shared_qk else projected[1]
        device = x.device if x.device.type != "meta" else torch.device("cpu")
        out = lsh_attention(
            q,
            k,
            v,
            bucket_size=self.bucket_size,
            n_hashes=self.n_hashes,
            is_causal=self.is_causal,
            shared_qk=self.shared_qk,
            key_padding_mask=mask,
            generator=self._generator(device),
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return out.reshape(shape)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # On the CPU explicitly: state_dict() may run under `with torch.device("meta")`.
        destination[prefix + SEED_KEY] = torch.tensor(self.seed, dtype=torch.int64, device="cpu")
        for key, state in self.generator_states().items():
            destination[prefix + GENERATOR_STATE_PREFIX + key] = state

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The seed and generator entries are neither parameters nor buffers: take them out before nn.Module's
        # loader, which would report them as unexpected.
        ours = {
            key[len(prefix) :]: value
            for key, value in state_dict.items()
            if key.startswith(prefix) and is_rng_state_key(key[len(prefix) :])
        }
        rest = {
            key: value
            for key, value in state_dict.items()
            if not (key.startswith(prefix) and key[len(prefix) :] in ours)
        }
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not ours:
            if strict:
                missing_keys.append(prefix + SEED_KEY)
            return  # nothing of this layer's randomness in the state dict: keep the seed and the generators
        try:
            if LEGACY_EXTRA_STATE_KEY in ours:
                legacy, keys = ours[LEGACY_EXTRA_STATE_KEY], [prefix + key for key in ours]
                entries = _legacy_entries(prefix + LEGACY_EXTRA_STATE_KEY, legacy, keys)
                ours = {key[len(prefix) :]: value for key, value in entries.items()}
            seed = ours.pop(SEED_KEY, None)
            states = {
                key[len(GENERATOR_STATE_PREFIX) :]: _generator_state(prefix + key, value)
                for key, value in ours.items()
            }
            if seed is not None:
                self.seed = _seed(prefix + SEED_KEY, seed)
        except ValueError as error:
            error_msgs.append(str(error))
            return
        if seed is None and strict:
            missing_keys.append(prefix + SEED_KEY)
        self.set_generator_states(states)

    def sequence_length(self, x: torch.Tensor) -> int:
        """Tokens per attended sequence for input ``x``: N for (B, N, C) and (B, T, N, C), H x W for images
        and (B, T, H, W, C) frames; every axis before them is batch."""
        if x.dim() == 3 or (x.dim() == 4 and self.layout == "btnc"):
            return x.shape[-2]
        return x.shape[-3] * x.shape[-2]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, bucket_size={self.bucket_size}, "
            f"n_hashes={self.n_hashes}, is_causal={self.is_causal}, shared_qk={self.shared_qk}, "
            f"seed={self.seed}" + (f", layout={self.layout!r}" if self.layout else "")
        )
