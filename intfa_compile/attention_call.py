"""One call of the INT8 attention op, described whole, and the op's contract: what it takes and refuses.

``intfa::int8_attention``'s schema is flat (a custom op's must be); right behind it the call becomes one frozen
``AttentionCall`` (the tensors, the causal band, the scale, the output dtype and the kernel's options), which the
CPU implementation, the Triton launcher and the triton_op take whole; the schema itself is made from its fields
(``op_signature``), so they are spelled out once. The shape rules and checks that the op, the guards and the
triton_op share live here too, public.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .numerics import KV_BLOCK_AUTOTUNE, KV_BLOCK_SIZES, MAX_HEAD_DIM, P_SCALE_MODES, padded_head_dim, resolve_kv_block
from .pv_formats import PV_FORMATS, PVFormat, pv_format_of_value

OUT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
"""The op's ``out_dtype`` values, by name. A name, not a ``torch.dtype``: AOTInductor's proxy executor before torch
2.13 hands a custom op's dtype arguments over in the serializer's numbering, not c10's (bfloat16 arrives as
quint8, float32 as float64), so a package built with the op's dtype argument computes nothing right; a string
travels unchanged on every release."""


def out_dtype_name(dtype: torch.dtype) -> str:
    """``dtype`` as the op's ``out_dtype`` (``OUT_DTYPES``)."""
    return str(dtype).removeprefix("torch.")


def out_dtype_of(name: str) -> torch.dtype:
    """The dtype an ``out_dtype`` name stands for; ``TypeError`` for any other name."""
    if name not in OUT_DTYPES:
        raise TypeError(f"int8_attention: out_dtype must be one of {tuple(OUT_DTYPES)}, got {name!r}")
    return OUT_DTYPES[name]


@dataclass(frozen=True)
class LaunchOptions:
    """How the CUDA kernel runs a call, never what it computes (as FlexAttention's ``kernel_options``): the op takes
    them as one word list (``launch``, e.g. "tma_loads"), so a new launch knob is a boolean field here, named as its
    config toggle, and its use in the launcher, not a change of the op's schema (which compiled graphs and
    AOTInductor packages record)."""

    tma_loads: bool = False
    """Load K and V through Hopper's tensor memory accelerator where the layout allows (``config.tma_loads``;
    ``kernels.int8_flash_attention.tensor_descriptors_fit``); ignored before sm_90 and off CUDA."""

    @property
    def words(self) -> str:
        """The op's ``launch`` argument: the names of the options that are on, space-separated ("" for none)."""
        return " ".join(field.name for field in fields(self) if getattr(self, field.name))

    @staticmethod
    def of_words(words: str) -> LaunchOptions:
        """The options an op's ``launch`` argument names; ``ValueError`` naming any word that is not an option."""
        return _launch_options_of_words(words)


DEFAULT_LAUNCH = LaunchOptions()
"""Every launch option off: the op's ``launch=""``."""


@functools.lru_cache(maxsize=64)
def _launch_options_of_words(words: str) -> LaunchOptions:
    known = [field.name for field in fields(LaunchOptions)]
    unknown = [word for word in words.split() if word not in known]
    if unknown:
        raise ValueError(f"int8_attention: launch takes the words {known} (space-separated), got {words!r}")
    return LaunchOptions(**{word: True for word in words.split()})


@dataclass(frozen=True)
class KernelOptions:
    """The kernel's knobs for one call (FlexAttention's ``kernel_options``): the method's choices that change the
    result (P's scale, keys per block) and, in ``launch``, those that only change how it runs. Each field is named
    as the config toggle that sets it (``of_settings``) and is one parameter of the op's flat schema
    (``op_signature``), so an option the kernel reads is declared here and in ``config`` and read by the kernel and
    its CPU twin, nowhere else."""

    p_scale: str = "fixed"
    """How P is scaled before its INT8 rounding: "fixed" (1/127) or "row_block" (``numerics.P_SCALE_MODES``)."""
    kv_block: int = 0
    """Keys per block of the online softmax, which the result depends on (P is quantized against the running
    maximum of the blocks so far): one of ``KV_BLOCK_SIZES``, 0 for ``numerics.default_kv_block`` (a rule of
    shapes, the same on every device), or ``KV_BLOCK_AUTOTUNE`` to let the CUDA kernel's autotuner pick by timing
    (elsewhere the rule)."""
    launch: LaunchOptions = DEFAULT_LAUNCH
    """How the CUDA kernel runs (never what it computes)."""

    @staticmethod
    def of_settings(settings: Any) -> KernelOptions:
        """The options a compilation's settings choose (``config.Settings``): each field, and each launch option,
        read from the setting of its name."""
        launch = LaunchOptions(**{field.name: getattr(settings, field.name) for field in fields(LaunchOptions)})
        return KernelOptions(**{field.name: getattr(settings, field.name) for field in fields(KernelOptions)
                                if field.name != "launch"}, launch=launch)

    @staticmethod
    def of(options: KernelOptions | Mapping[str, Any] | None) -> KernelOptions:
        """``options`` as a record: a record as it is, a mapping of field names (``{"p_scale": "row_block"}``) or
        None (every default); ``TypeError`` naming an unknown key."""
        if options is None or isinstance(options, KernelOptions):
            return options or DEFAULT_OPTIONS
        known = [field.name for field in fields(KernelOptions)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"int8_sdpa: kernel_options takes the keys {known}, got {unknown}")
        return KernelOptions(**options)

    def op_arguments(self) -> dict[str, Any]:
        """The options as the op's arguments, by name (``launch`` as its words)."""
        return {field.name: getattr(self, field.name) for field in fields(self) if field.name != "launch"} | {
            "launch": self.launch.words}

    @staticmethod
    def of_op_arguments(arguments: Mapping[str, Any]) -> KernelOptions:
        """The options among an op call's arguments (by name; ``launch`` as words)."""
        return KernelOptions(**{name: arguments[name] for name in _OPTION_ARGUMENTS},
                             launch=LaunchOptions.of_words(arguments["launch"]))


DEFAULT_OPTIONS = KernelOptions()
"""Every kernel option at its default."""

_OPTION_ARGUMENTS = tuple(field.name for field in fields(KernelOptions) if field.name != "launch")
"""The options that are op arguments as they are (``launch`` travels as words)."""


_FLOAT_OUT = tuple(OUT_DTYPES.values())
_QUANTIZED_V = tuple(fmt.v_dtype for fmt in PV_FORMATS.values() if fmt.quantized)


@dataclass(frozen=True)
class AttentionCall:
    """softmax(Q·Kᵀ·sm_scale + mask)·V from INT8 inputs: everything one call computes with (see
    ``ops.int8_attention`` for each argument's meaning), the dtype it returns, and the kernel's ``options``. The
    op's flat schema is these fields in order (``op_signature``), so they are spelled out here only."""

    q: Tensor
    k: Tensor
    v: Tensor
    q_scale: Tensor
    k_scale: Tensor
    v_scale: Tensor | None
    attn_mask: Tensor | None = None
    is_causal: bool = False
    sm_scale: float = 1.0
    causal_offset: int = 0
    window_left: int = -1
    out_dtype: str = "float32"
    options: KernelOptions = DEFAULT_OPTIONS

    @property
    def pv(self) -> PVFormat:
        """The P·V format the call runs, from V's dtype."""
        return pv_format_of_value(self.v.dtype)

    @property
    def block_n(self) -> int:
        """Keys per block of the online softmax this call computes with (``options.kv_block``, or the shape
        rule)."""
        return resolve_kv_block(self.options.kv_block, padded_head_dim(self.q.shape[-1]), self.pv)

    @property
    def tensors(self) -> tuple[Tensor | None, ...]:
        """q, k, v, q_scale, k_scale, v_scale, attn_mask: the call's tensors, in the op's order."""
        return self.q, self.k, self.v, self.q_scale, self.k_scale, self.v_scale, self.attn_mask

    def to(self, device: torch.device | str) -> AttentionCall:
        """The same call with its tensors on ``device``."""
        moved = {name: getattr(self, name).to(device) for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale",
                                                                    "attn_mask") if getattr(self, name) is not None}
        return replace(self, **moved)

    def op_arguments(self) -> dict[str, Any]:
        """The call as the op's arguments, by name (the inverse of ``of_op_arguments``)."""
        return {field.name: getattr(self, field.name) for field in fields(self) if field.name != "options"} | (
            self.options.op_arguments())

    @staticmethod
    def of_op_arguments(arguments: Mapping[str, Any]) -> AttentionCall:
        """The call an op's arguments describe (by name, as ``op_signature`` binds them; others are ignored)."""
        return AttentionCall(**{name: arguments[name] for name in _CALL_ARGUMENTS},
                             options=KernelOptions.of_op_arguments(arguments))


_CALL_ARGUMENTS = tuple(field.name for field in fields(AttentionCall) if field.name != "options")
"""The call's fields that are op arguments as they are (``options`` is spread into its own)."""


def op_signature(*extra: str) -> inspect.Signature:
    """The flat signature of the INT8 attention ops (``intfa::int8_attention`` and its triton_op): the fields of
    ``AttentionCall`` in order, ``options`` spread into the fields of ``KernelOptions`` (``launch`` as a string of
    words), then the ``extra`` optional tensors; returns a Tensor. Annotations are the fields' own (strings, which
    ``torch.library.infer_schema`` evaluates in the implementing function's module: it must import ``Tensor``), so
    the schema follows the description and a field is never spelled out twice."""
    parameters = [inspect.Parameter(field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=field.type,
                                    default=inspect.Parameter.empty if field.default is MISSING else field.default)
                  for record in (AttentionCall, KernelOptions) for field in fields(record)
                  if field.name not in ("options", "launch")]
    parameters.append(inspect.Parameter("launch", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str",
                                        default=DEFAULT_LAUNCH.words))
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Tensor | None",
                                     default=None) for name in extra]
    return inspect.Signature(parameters, return_annotation="Tensor")


_EMPTY = inspect.Parameter.empty


def bind_op_arguments(signature: inspect.Signature, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """An op call's arguments by name, defaults applied (``signature``: an ``op_signature``). The dispatcher hands
    an implementation its arguments positionally, in the schema's order, trailing defaults left out (there are no
    keyword-only ones), so on the op's hot path this is a zip and the defaults; any other call is bound."""
    parameters = signature.parameters
    names = tuple(parameters)
    rest = names[len(args):]
    if not kwargs and len(args) <= len(names) and all(parameters[name].default is not _EMPTY for name in rest):
        return dict(zip(names[:len(args)], args, strict=True)) | {name: parameters[name].default for name in rest}
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def mask_broadcasts_to(mask_shape: Sequence[int], scores_shape: Sequence[int]) -> bool:
    """Whether a mask of ``mask_shape`` expands to exactly ``scores_shape`` (B, Hq, Nq, Nk)."""
    if len(mask_shape) > len(scores_shape):
        return False
    return all(m in (1, s) for m, s in zip(reversed(mask_shape), reversed(scores_shape), strict=False))


def mask_never_broadcasts(mask_shape: Sequence[Any], scores_shape: Sequence[Any]) -> bool:
    """Whether a mask of ``mask_shape`` cannot expand to ``scores_shape`` whatever values symbolic sizes take
    (a size known to be neither 1 nor the scores')."""
    if len(mask_shape) > len(scores_shape):
        return True
    return any(statically_known_true(m != 1) and statically_known_true(m != s)
               for m, s in zip(reversed(mask_shape), reversed(scores_shape), strict=False))


def kernel_shape_problem(q_shape: Sequence[Any], k_shape: Sequence[Any], v_shape: Sequence[Any]
                         ) -> tuple[str | None, bool]:
    """Whether the INT8 kernel takes q, k, v of these (B, H, N, D) shapes: (the reason it cannot for any value
    of their symbols, or None; True if it can for every value). Plain sizes decide at once; symbolic ones
    (dynamic shapes) may leave it open, and then the op decides when it runs (``exact_*`` arguments). No guard
    is added."""
    conditions = (
        (q_shape[-1] == v_shape[-1], f"value head dim {v_shape[-1]} differs from query head dim {q_shape[-1]}"),
        (q_shape[-1] <= MAX_HEAD_DIM, f"head dim {q_shape[-1]} is above the INT8 kernel's {MAX_HEAD_DIM}"),
        (q_shape[-1] == k_shape[-1], f"key head dim {k_shape[-1]} differs from query head dim {q_shape[-1]}"),
        (q_shape[0] == k_shape[0], f"query batch {q_shape[0]} differs from key batch {k_shape[0]}"),
        (q_shape[1] % k_shape[1] == 0, f"{q_shape[1]} query heads are not a multiple of {k_shape[1]} KV heads"),
        *((k == v, f"key {tuple(k_shape)} and value {tuple(v_shape)} shapes differ")
          for k, v in zip(k_shape, v_shape, strict=True)),
    )
    for condition, reason in conditions:
        if statically_known_true(torch.sym_not(condition)):
            return reason, False
    return None, all(statically_known_true(condition) for condition, _ in conditions)


def check_call(call: AttentionCall, shapes: bool = True) -> None:
    """What the op refuses in ``call``, naming the argument: kinds (ranks, dtypes, choices) always; ``shapes`` too
    unless the caller is the fake implementation tracing symbolic sizes, which it must not guard on."""
    q, k, v, q_scale, k_scale, v_scale = call.q, call.k, call.v, call.q_scale, call.k_scale, call.v_scale
    attn_mask, p_scale, kv_block = call.attn_mask, call.options.p_scale, call.options.kv_block
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.dim() != 4:
            raise ValueError(f"int8_attention: {name} must be 4-D (B, H, N, D), got shape {tuple(tensor.shape)}")
    for name, tensor in (("q", q), ("k", k)):
        if tensor.dtype != torch.int8:
            raise TypeError(f"int8_attention: {name} must be int8, got {tensor.dtype}")
    for name, tensor in (("q_scale", q_scale), ("k_scale", k_scale), ("v_scale", v_scale)):
        if tensor is not None and tensor.dtype != torch.float32:
            raise TypeError(f"int8_attention: {name} must be float32, got {tensor.dtype}")
    if v.dtype not in _QUANTIZED_V and v.dtype not in _FLOAT_OUT:
        raise TypeError(f"int8_attention: v must be int8, float8_e4m3fn, float16, bfloat16 or float32, got {v.dtype}")
    if (v.dtype in _QUANTIZED_V) != (v_scale is not None):
        raise ValueError("int8_attention: an int8 or float8_e4m3fn v needs its per-channel v_scale; a 16/32-bit v "
                         "(half-INT8) takes none")
    if p_scale not in P_SCALE_MODES:
        raise ValueError(f"int8_attention: p_scale must be one of {P_SCALE_MODES}, got {p_scale!r}")
    pv = pv_format_of_value(v.dtype)
    if p_scale not in pv.p_scales:
        raise ValueError(f"int8_attention: a {v.dtype} v (pv_format={pv.name!r}) takes P's {' or '.join(pv.p_scales)} "
                         f"scale only (p_scale={p_scale!r})")
    if kv_block not in (0, KV_BLOCK_AUTOTUNE, *KV_BLOCK_SIZES):
        raise ValueError(f"int8_attention: kv_block must be 0 (the default rule), {KV_BLOCK_AUTOTUNE} (autotuned on "
                         f"CUDA) or one of {KV_BLOCK_SIZES}, got {kv_block}")
    out_dtype_of(call.out_dtype)
    if attn_mask is not None and attn_mask.dtype != torch.bool and not attn_mask.dtype.is_floating_point:
        raise TypeError(f"int8_attention: attn_mask must be boolean (True = keep) or additive floating point, got "
                        f"{attn_mask.dtype}")
    if call.window_left >= 0 and not call.is_causal:
        raise ValueError("int8_attention: window_left is a sliding window behind the causal diagonal: it needs "
                         "is_causal=True")
    if shapes:
        _check_shapes(q, k, v, q_scale, k_scale, v_scale, attn_mask)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, q_scale: Tensor, k_scale: Tensor, v_scale: Tensor | None,
                  attn_mask: Tensor | None) -> None:
    batch, heads_q, n_q, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim or v.shape != k.shape:
        raise ValueError(f"int8_attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if heads_q % k.shape[1] != 0:
        raise ValueError(f"int8_attention: query heads {heads_q} must be a multiple of KV heads {k.shape[1]}")
    if q_scale.shape != q.shape[:3] or k_scale.shape != k.shape[:3]:
        raise ValueError("int8_attention: q_scale and k_scale must be per token: (B, H, N)")
    if v_scale is not None and v_scale.shape != (*v.shape[:2], head_dim):
        raise ValueError("int8_attention: v_scale must be per channel: (B, Hk, D)")
    if attn_mask is not None and not mask_broadcasts_to(attn_mask.shape, (batch, heads_q, n_q, k.shape[2])):
        raise ValueError(f"int8_attention: attn_mask {tuple(attn_mask.shape)} does not broadcast to the scores")


def static_sizes(*tensors: Tensor | None) -> bool:
    """Whether every size of ``tensors`` is a plain number (no symbol of dynamic shapes)."""
    return all(isinstance(size, int) for tensor in tensors if tensor is not None for size in tensor.shape)


def empty_output(call: AttentionCall, exact_value: Tensor | None = None) -> Tensor:
    """The op's output (``call.out_dtype``). Strided like q, so a (B, N, H, D)-major query gives a
    (B, N, H, D)-major output, as SDPA does; where the shapes were symbolic at compile time (``exact_value``
    given) it is contiguous with value's head dim instead, the one layout the compile-time description and the
    run can agree on whatever the sizes turn out to be."""
    q, dtype = call.q, out_dtype_of(call.out_dtype)
    if exact_value is None:
        return torch.empty_like(q, dtype=dtype)
    return q.new_empty((*q.shape[:-1], exact_value.shape[-1]), dtype=dtype)
