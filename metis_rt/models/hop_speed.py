"""How a streaming hop is run fast (issue 20): the eager fast path and ``torch.compile`` of the model stacks.

Independent switches (``threads`` is applied by the processor, the others on the loaded components by
:func:`apply_hop_speed`):

* ``fast_path`` — the eager optimisations of :mod:`metis_rt.models.decoding`, :mod:`~metis_rt.models.stage1`,
  :mod:`~metis_rt.models.s2a` and :mod:`~metis_rt.models.transformer` (the mask schedule computed once per loop,
  no host round trip per step, the CFG pair sharing one step condition and one set of adaptive-norm scales, RoPE
  tables cached, the S2A semantic embedding looked up once per window), the step conditions and norm scales
  remembered per decoding step across hops, each layer's q/k/v and gate/up projections stacked into one matrix
  product each (:meth:`~metis_rt.models.transformer.DiffusionTransformer.fuse`: the weights become views of the
  stacked tensor, nothing is copied), the CFG pair packed along the sequence axis (one set of products for both
  passes), seeded streams' Gumbel noise transformed once per batch, w2v-BERT's input features in torch for all
  windows of a step at once (:mod:`metis_rt.models.fbank`, the extractor's values bit for bit) and w2v-BERT through
  :mod:`metis_rt.models.ssl_fast` (functional calls on the module's parameters, q/k/v stacked, the relative-position
  tables kept per window length). Same results up to float rounding (the parity vectors pass on this path; in
  float64 the decoded ids are those of the previous code path), which ``fast_path=False`` keeps selectable as the
  baseline.
* ``packed_weights`` — on a CPU in float32, the stacked layers multiply from weights kept in oneDNN's layout
  (:mod:`metis_rt.models.packed_linear`: MKL re-packs a weight on every product, which costs as much as the
  arithmetic for a window's few rows; wide products only, stacks up to 64 MiB, not while compiling). Equal to the
  unpacked products within float32 rounding; float64 (the parity vectors) and other devices are never packed.
* ``threads`` — the CPU intra-op thread count, measured on the streams' own hops by default
  (:mod:`metis_rt.models.thread_choice`, :mod:`metis_rt.streaming.thread_probe`), with numpy's BLAS held to one
  thread so that its spinning workers leave the cores to torch (that contention made the pre-issue-20 hops two to
  three times slower on 2 cores).
* ``compile`` — ``torch.compile`` of each diffusion transformer's :meth:`~DiffusionTransformer.guided_rows` (the
  CFG pair and the guidance in one graph) and of the w2v-BERT encoder, with dynamic shapes so one graph serves every
  prompt length; on CUDA the compiled stacks run as CUDA graphs (``mode="reduce-overhead"``) unless
  ``cuda_graphs`` is off. Results match eager within float tolerance (fused kernels reorder sums), not bit for bit.
  ``"auto"`` compiles on CUDA only: on a CPU the first hops of a new shape family stall the engine while
  inductor compiles (minutes on a 2-core CPU: bench/RESULTS.md), so a CPU deployment opts in with ``"always"``.

Settings: ``speed:`` in ``configs/streaming.yaml`` (``compile: auto|always|never``, ``fast_path``, ``cuda_graphs``,
``packed_weights``, ``threads: auto|default|N``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "always", "never")
THREAD_CHOICES = ("auto", "default")
# Compiled graph variants one code object may hold: stacks x (batch 1 / many) x (mask / none) x (CFG / none).
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class HopSpeed:
    fast_path: bool = True  # the eager optimisations (bit-identical); False = the pre-issue-20 code path
    compile: str = "auto"  # "auto" (CUDA only), "always", "never" (not on/off: YAML reads those as booleans)
    cuda_graphs: bool = True  # CUDA: run compiled stacks as CUDA graphs (mode="reduce-overhead")
    compile_ssl: bool = True  # also compile the w2v-BERT encoder when compiling
    compile_backend: str = "inductor"  # "eager": graph capture only, no code generation (bench dry runs)
    threads: int | str = "auto"  # CPU intra-op threads: "auto" (measured), "default" (torch's), or a count
    packed_weights: bool = True  # CPU float32: stacked layers multiply from oneDNN-packed weights (fast path only)

    def __post_init__(self):
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"speed.compile must be one of {', '.join(COMPILE_CHOICES)}, not {self.compile!r}")
        if isinstance(self.threads, bool) or not (
            self.threads in THREAD_CHOICES or (isinstance(self.threads, int) and self.threads >= 1)
        ):
            raise ValueError(f"speed.threads must be auto, default or a count >= 1, not {self.threads!r}")

    def with_threads(self, threads: int | None) -> HopSpeed:
        """These settings with a command line's ``--threads`` (None: unchanged)."""
        return self if threads is None else dataclasses.replace(self, threads=threads)

    def compiles(self, device: torch.device) -> bool:
        return self.compile == "always" or (self.compile == "auto" and torch.device(device).type == "cuda")


# The code path as it stood before issue 20 (torch's default threads too): the baseline of bench/hop_speed.py.
BASELINE = HopSpeed(fast_path=False, compile="never", threads="default", packed_weights=False)


def apply_hop_speed(comps, speed: HopSpeed) -> list[str]:
    """Set ``speed`` on the components (in place; also affects an offline pipeline sharing them).

    Returns the names of the parts that now run compiled. Calling it again with another setting replaces the
    previous one (a stack compiled before runs eager again under ``compile="never"``).
    """
    stacks = comps.generative_models()
    compiled = []
    use_compile = speed.compiles(comps.device)
    graphs = use_compile and speed.cuda_graphs and torch.device(comps.device).type == "cuda"
    if use_compile:
        _raise_recompile_limit()
    for name, model in stacks.items():
        model.fast_path = speed.fast_path
        stack = model.diff_estimator
        stack.__dict__.pop("guided_rows", None)  # back to the class's eager method
        stack.fuse(speed.fast_path, pack=speed.packed_weights and not use_compile)
        if use_compile:
            stack.guided_rows = _compiled(stack.guided_rows, graphs, speed.compile_backend)
            compiled.append(name)
    # the w2v-BERT fast pass (models/ssl_fast.py), unless the module is compiled instead
    comps.ssl.fast_path = speed.fast_path and not (use_compile and speed.compile_ssl)
    encoder = comps.ssl.encoder
    encoder.__dict__.pop("forward", None)
    if use_compile and speed.compile_ssl:
        encoder.forward = _compiled(encoder.forward, graphs, speed.compile_backend, clone=False)
        compiled.append("ssl")
    if compiled:
        log.info("compiled (%s): %s", "CUDA graphs" if graphs else "inductor", ", ".join(compiled))
    return compiled


def _raise_recompile_limit() -> None:
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))


def _compiled(fn: Callable, graphs: bool, backend: str, clone: bool = True) -> Callable:
    """``torch.compile(fn)`` with dynamic shapes; under CUDA graphs the outputs are cloned out of the graph pool.

    A CUDA graph's outputs live in memory the next replay overwrites; the decoding loop keeps the conditional
    output while the unconditional runs and keeps logits across steps, so they are copied out.
    """
    if backend != "inductor":
        return torch.compile(fn, dynamic=True, backend=backend)
    compiled = torch.compile(fn, dynamic=True, mode="reduce-overhead" if graphs else None)
    if not graphs:
        return compiled

    def run(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return _clone(compiled(*args, **kwargs)) if clone else _clone_hf(compiled(*args, **kwargs))

    return run


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone(o) for o in out)
    return out


def _clone_hf(out):
    """A transformers ModelOutput: clone its hidden states (the only field the SSL stage reads)."""
    if getattr(out, "hidden_states", None) is not None:
        out.hidden_states = tuple(h.clone() for h in out.hidden_states)
    return out
